"""The model file names of a version directory, in one place (the runtime loads them;
the repository lays them out, packs and fingerprints them)."""

from __future__ import annotations

MODEL_FILE = "model.tflite"  # required
LITE_MODEL = "model_lite.tflite"  # optional power-saving variant
EDGETPU_MODEL = "model_edgetpu.tflite"  # optional Edge TPU compiled variant
