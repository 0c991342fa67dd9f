#!/usr/bin/env python3
"""Build the zoo's synthetic SSD-style detector ``zoo/detector/v1/`` (or check it is reproducible).

What it is: :func:`edged.testing.tflite_build.ssd_detector_model`, a 4 KB model
with the real layout of a TFLite SSD detector as Frigate's ``ssd`` model type
reads it: input ``uint8 [1, 320, 320, 3]``, and the four outputs of the
``TFLite_Detection_PostProcess`` op (boxes, classes, scores, count), which both
LiteRT and tflite-runtime 2.14 provide.  It finds colour, not objects: an 8×8
grid of 40-pixel cells, class 0 ``red`` / 1 ``green`` / 2 ``blue`` where a cell's
mean colour leans to that channel, each box the cell's anchor.  It exists so the
Frigate endpoint, its post-processing and hot swaps can be exercised end to end
without a trained network (nothing is downloaded).

The golden sample is the image :func:`sample_image` draws (a full red cell, a
full blue cell, a half green cell: scores ~0.98, ~0.98 and ~0.50).

Usage::

    python scripts/make_detector_model.py            # (re)write zoo/detector/v1
    python scripts/make_detector_model.py --check    # exit 1 if it differs from a fresh build
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:  # run as a plain script from a checkout
        sys.path.insert(0, str(path))

from make_default_model import compare  # noqa: E402

from edged.repository.manifest import Manifest, contract_from_details, file_entry, write_manifest  # noqa: E402
from edged.testing.tflite_build import ssd_detector_model  # noqa: E402

NAME, VERSION = "detector", "v1"
COMMAND = "python scripts/make_detector_model.py"
LABELS = ("red", "green", "blue")
SIZE = 320


def sample_image(size: int = SIZE) -> np.ndarray:
    """``uint8 [1, size, size, 3]``: black, a red cell (1, 1), a blue cell (4, 5), half a green cell (0, 7)."""
    cell = size // 8
    img = np.zeros((1, size, size, 3), np.uint8)
    img[0, cell:2 * cell, cell:2 * cell, 0] = 255
    img[0, 4 * cell:5 * cell, 5 * cell:6 * cell, 2] = 255
    img[0, 0:cell // 2, 7 * cell:8 * cell, 1] = 255
    return img


def _run(model: Path, image: np.ndarray) -> tuple[list[np.ndarray], Any]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], image)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()], it


def build(root: Path) -> Path:
    """Write ``<root>/detector/v1/`` (manifest last); returns the version directory."""
    vdir = root / NAME / VERSION
    (vdir / "manifest.json").unlink(missing_ok=True)
    shutil.rmtree(vdir / "golden", ignore_errors=True)
    (vdir / "golden").mkdir(parents=True)
    (vdir / "model.tflite").write_bytes(ssd_detector_model(size=SIZE, classes=len(LABELS)))
    (vdir / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    image = sample_image()
    outputs, it = _run(vdir / "model.tflite", image)
    if int(outputs[3][0]) != 3:
        raise RuntimeError(f"the sample image gave {outputs[3][0]} detections, expected 3")
    np.save(vdir / "golden" / "0.input.npy", image)
    golden_outputs = []
    for i, out in enumerate(outputs):
        np.save(vdir / "golden" / f"0.output{i}.npy", out)
        golden_outputs.append(f"golden/0.output{i}.npy")
    golden = [{"input": "golden/0.input.npy", "outputs": golden_outputs, "atol": 1e-4, "rtol": 1e-4}]
    files = {"model.tflite": file_entry(vdir / "model.tflite"), "labels.txt": file_entry(vdir / "labels.txt")}
    for rel in ["golden/0.input.npy", *golden_outputs]:
        files[rel] = file_entry(vdir / rel)
    manifest = Manifest(
        name=NAME, version=VERSION, files=files,
        contract=contract_from_details(it.get_input_details(), it.get_output_details()), golden=golden,
        notes="synthetic SSD-style colour-cell detector with TFLite_Detection_PostProcess outputs; "
              "see scripts/make_detector_model.py and docs/frigate.md",
        created_by={"command": COMMAND, "seed": 0},
    )
    write_manifest(vdir, manifest)
    return vdir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT / "zoo", help="repository root (default: zoo/)")
    p.add_argument("--check", action="store_true",
                   help="rebuild in a temporary directory and compare with --repo; exit 1 on any difference")
    args = p.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory(prefix="edged-detector-") as tmp:
            problems = compare(args.repo / NAME / VERSION, build(Path(tmp)))
        if problems:
            print(f"{args.repo / NAME / VERSION} is not reproducible from this script:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"ok: {args.repo / NAME / VERSION} matches a fresh build")
        return 0
    print(f"wrote {build(args.repo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
