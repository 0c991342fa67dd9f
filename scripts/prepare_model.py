#!/usr/bin/env python3
"""The cloud half of the edge flow: train, compress, evaluate and publish ``digits`` v1…v6.

A small Keras CNN is trained on scikit-learn's 8×8 digits (the dataset ships in
the package; nothing is downloaded) and turned into six versions of one model,
each converted to ``.tflite``, evaluated on the held-out test split by running
the converted file with ``ai_edge_litert`` (the runtime edged uses) and
published with :func:`edged.repository.pack.pack` (atomic, manifest last):

=====  ======================================  ===========================  ==========
v1     float32 baseline                        float32 in / float32 out     lite: int8
v2     dynamic-range quantization (int8 w.)    float32 in / float32 out     –
v3     full-integer int8                       **uint8 in / uint8 out**     –
v4     float16 weights                         float32 in / float32 out     lite: int8
v5     magnitude pruning (tfmot) → int8        float32 in / float32 out     –
v6     distillation into a student → int8      float32 in / float32 out     –
=====  ======================================  ===========================  ==========

"lite" (``model_lite.tflite``, the power-saving variant) is the baseline
network quantized to full int8 *with float32 I/O*, so its contract is identical
to ``model.tflite``'s.  Every version but v3 has the dtypes and shapes of the
bundled ``models/digits`` (float32 ``[1, 8, 8, 1]`` raw pixels 0..16 in, float32
``[1, 10]`` probabilities out; the tensor names are the converter's,
``serving_default_image:0`` and ``StatefulPartitionedCall:0``), so the daemon
swaps between them without ``force``; v3 is the integer-only-accelerator variant
(Edge TPU style) and needs ``force``.

Determinism: ``tf.keras.utils.set_random_seed(seed)`` +
``enable_op_determinism()``, the same seeded split as
``scripts/make_default_model.py`` and fixed shuffles, so the same seed on the
same TensorFlow build gives the same weights.

``min_runtime``: the converter records the oldest TFLite runtime able to run the
file in the model's ``min_runtime_version`` metadata (from
``tensorflow/lite/tools/versioning/runtime_version.cc``: the newest op version
used).  When that is newer than 2.14 — the last ``tflite-runtime`` wheel — the
manifest says ``{"tflite-runtime": "<that version>"}`` and a daemon on
tflite-runtime 2.14 refuses the version with a clear message
(``edged.repository.check.check_min_runtime``) instead of failing deep inside
``AllocateTensors``.

Usage::

    python scripts/prepare_model.py [--repo zoo] [--name digits] [--seed 0] [--epochs N] [--quick]
    python scripts/prepare_model.py --report [--repo zoo]      # docs/models.md + docs/models_accuracy_vs_size.png
    python scripts/prepare_model.py --bench-model PATH         # the MobileNet-class int8 benchmark model

Needs ``pip install -e '.[tools]'`` (TensorFlow); the daemon never does.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before TensorFlow is imported: tensorflow-model-optimization works on Keras 2
# (tf_keras) only, and the converter must see the same Keras the models are built with.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only: GPU kernels are not deterministic

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

DEFAULT_REPO = ROOT / "zoo"
DOCS = ROOT / "docs"
COMMAND = "python scripts/prepare_model.py"
TEST_FRACTION = 0.25
PREPROCESSING = {"color": "L", "mean": [0.0], "std": [15.9375], "invert": True}  # as models/digits
GOLDEN = 4
TARGET_SPARSITY = 0.75
TEMPERATURE = 4.0
ALPHA_HARD = 0.3  # weight of the hard-label loss in distillation; the rest goes to the soft targets
#: The last tflite-runtime release on PyPI; models needing a newer runtime get min_runtime.
TFLITE_RUNTIME_LATEST = "2.14"
#: Allowed |accuracy - baseline| for every variant (the tests assert it too).
ACCURACY_BOUND = 0.03
EPOCHS = {"teacher": 40, "prune": 10, "student": 80}
QUICK_EPOCHS = {"teacher": 12, "prune": 4, "student": 25}


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 ``[N, 8, 8, 1]`` pixels 0..16 and int64 labels.

    The same seeded ``RandomState`` permutation and 25 % test fraction as
    ``scripts/make_default_model.py``, so accuracies compare with the bundled model.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32).reshape(-1, 8, 8, 1)
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(seed).permutation(len(y))
    n_test = int(round(len(y) * TEST_FRACTION))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


# -- Keras models ----------------------------------------------------------------------------

def _keras() -> Any:
    import tf_keras

    return tf_keras


def teacher_model() -> Any:
    """The baseline: two 3×3 convolutions, max-pool, a 64-unit dense layer; logits out (≈38 k params)."""
    k = _keras()
    inp = k.Input((8, 8, 1), name="image")
    x = k.layers.Rescaling(1.0 / 16.0)(inp)
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = k.layers.MaxPooling2D(2)(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(64, activation="relu", name="fc1")(x)
    out = k.layers.Dense(10, name="logits")(x)
    return k.Model(inp, out, name="teacher")


def student_model() -> Any:
    """The distillation student: one 24-unit hidden layer (≈1.8 k params, ~20× fewer than the teacher)."""
    k = _keras()
    inp = k.Input((8, 8, 1), name="image")
    x = k.layers.Rescaling(1.0 / 16.0)(inp)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(24, activation="relu", name="fc1")(x)
    out = k.layers.Dense(10, name="logits")(x)
    return k.Model(inp, out, name="student")


def with_softmax(logits_model: Any) -> Any:
    """The served form: ``probs`` = softmax(logits), the same output as the bundled model."""
    k = _keras()
    out = k.layers.Softmax(name="probs")(logits_model.output)
    return k.Model(logits_model.input, out, name=logits_model.name + "_probs")


def _compile(model: Any) -> None:
    k = _keras()
    model.compile(optimizer=k.optimizers.Adam(1e-3),
                  loss=k.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def train_teacher(x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    model = teacher_model()
    _compile(model)
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    return model


def prunable_kernels(model: Any) -> dict[str, np.ndarray]:
    """The Conv2D/Dense kernels of ``model`` (what magnitude pruning acts on)."""
    k = _keras()
    return {layer.name: layer.get_weights()[0] for layer in model.layers
            if isinstance(layer, (k.layers.Conv2D, k.layers.Dense))}


def sparsity(model: Any) -> float:
    """Fraction of exactly-zero weights over all Conv2D/Dense kernels."""
    kernels = prunable_kernels(model).values()
    return float(sum(int((w == 0).sum()) for w in kernels) / sum(w.size for w in kernels))


def prune(teacher: Any, x: np.ndarray, y: np.ndarray, epochs: int, target: float = TARGET_SPARSITY) -> Any:
    """Magnitude pruning with tensorflow-model-optimization, fine-tuned; returns the stripped model.

    Only Conv2D/Dense layers are wrapped (Rescaling/Flatten have no weights
    and are not in tfmot's registry).  ``ConstantSparsity`` from step 0 with a
    mask update every 10 steps: the fine-tuning epochs recover the accuracy the
    first cut costs.
    """
    import tensorflow_model_optimization as tfmot

    k = _keras()
    schedule = tfmot.sparsity.keras.ConstantSparsity(target, begin_step=0, frequency=10)

    def wrap(layer: Any) -> Any:
        if isinstance(layer, (k.layers.Conv2D, k.layers.Dense)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # prune_low_magnitude wraps the layer object it is given, trained weights included, and
    # fine-tuning then changes that layer in place: work on a copy so the teacher stays intact
    # for distillation.
    base = k.models.clone_model(teacher)
    base.set_weights(teacher.get_weights())
    pruned = k.models.clone_model(
        base, clone_function=lambda layer: wrap(layer) if isinstance(layer, (k.layers.Conv2D, k.layers.Dense))
        else layer.__class__.from_config(layer.get_config()))
    _compile(pruned)
    pruned.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def distill(teacher: Any, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
            temperature: float = TEMPERATURE, alpha: float = ALPHA_HARD) -> Any:
    """Train :func:`student_model` on ``alpha`` · CE(hard labels) + (1 − alpha) · T² · KL(teacher_T ‖ student_T)."""
    import tensorflow as tf

    k = _keras()
    student = student_model()
    opt = k.optimizers.Adam(3e-3)
    teacher_logits = teacher.predict(x, batch_size=256, verbose=0)
    soft = tf.nn.softmax(teacher_logits / temperature).numpy()

    @tf.function
    def step(xb: Any, yb: Any, sb: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = student(xb, training=True)
            hard = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
            log_p = tf.nn.log_softmax(logits / temperature)
            kl = tf.reduce_mean(tf.reduce_sum(sb * (tf.math.log(sb + 1e-12) - log_p), axis=1))
            loss = alpha * hard + (1.0 - alpha) * temperature ** 2 * kl
        grads = tape.gradient(loss, student.trainable_variables)
        opt.apply_gradients(zip(grads, student.trainable_variables))
        return loss

    rng = np.random.RandomState(seed + 2)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            step(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(soft[idx]))
    return student


# -- conversion ------------------------------------------------------------------------------

def convert(model: Any, technique: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model (softmax head attached) to ``.tflite`` bytes.

    ``technique``: ``float32``, ``dynamic`` (int8 weights, float activations),
    ``float16`` (fp16 weights), ``int8`` (full integer, float32 I/O kept so the
    contract matches the float versions) or ``int8-uint8io`` (full integer with
    uint8 input and output, for integer-only accelerators).
    """
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if technique == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif technique == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif technique in ("int8", "int8-uint8io"):
        if representative is None:
            raise ValueError("full-integer quantization needs a representative dataset")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]

        def rep() -> Any:
            for img in representative:
                yield [img[None].astype(np.float32)]

        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if technique == "int8-uint8io":
            conv.inference_input_type = tf.uint8
            conv.inference_output_type = tf.uint8
    elif technique != "float32":
        raise ValueError(f"unknown technique {technique!r}")
    return conv.convert()


def model_ops(data: bytes) -> tuple[list[str], str | None]:
    """``(["FULLY_CONNECTED/v12", ...], min_runtime_version metadata or None)`` of a ``.tflite``."""
    from edged.testing.tflite_build import _schema

    schema = _schema()
    m = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        ops.append(f"{names.get(code, code)}/v{oc.Version()}")
    min_version = None
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if md.Name() == b"min_runtime_version":
            raw = m.Buffers(md.Buffer()).DataAsNumpy().tobytes()
            min_version = raw.split(b"\0", 1)[0].decode() or None
    return sorted(ops), min_version


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())


def min_runtime_for(files: list[bytes]) -> tuple[dict[str, str] | None, str | None]:
    """``min_runtime`` for a version's model files, and the newest converter-reported runtime."""
    need = None
    for data in files:
        _, v = model_ops(data)
        if v and (need is None or _vkey(v) > _vkey(need)):
            need = v
    if need and _vkey(need) > _vkey(TFLITE_RUNTIME_LATEST):
        return {"tflite-runtime": ".".join(need.split(".")[:2])}, need
    return None, need


# -- evaluation ------------------------------------------------------------------------------

def interpreter(data: bytes, threads: int = 1) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=threads)
    it.allocate_tensors()
    return it


def to_input(it: Any, images: np.ndarray) -> np.ndarray:
    """Float 0..16 images → the model's input dtype (quantized with its scale/zero point if integer)."""
    d = it.get_input_details()[0]
    if np.dtype(d["dtype"]).kind in "iu":
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(images / scale + zp), info.min, info.max).astype(d["dtype"])
    return images.astype(d["dtype"])


def evaluate(data: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a ``.tflite`` over ``x`` (one image per invoke, as served)."""
    it = interpreter(data)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    xs = to_input(it, x)
    correct = 0
    for img, label in zip(xs, y):
        it.set_tensor(inp, img[None])
        it.invoke()
        correct += int(np.argmax(it.get_tensor(out)[0]) == label)
    return correct / len(y)


# -- pipeline --------------------------------------------------------------------------------

@dataclass
class Variant:
    version: str
    technique: str
    description: str
    data: bytes
    source: str  # which Keras model it was converted from
    lite: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_variants(seed: int, epochs: dict[str, int], log: Any = print) -> tuple[list[Variant], dict[str, Any]]:
    """Train and convert everything; returns the variants and facts about the Keras models."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train, x_test, y_test = load_split(seed)
    t0 = time.monotonic()
    teacher = train_teacher(x_train, y_train, epochs["teacher"])
    served = with_softmax(teacher)
    log(f"teacher trained in {time.monotonic() - t0:.1f}s ({teacher.count_params()} params)")
    int8_lite = convert(served, "int8", x_train)
    variants = [
        Variant("v1", "float32", "float32 baseline", convert(served, "float32"), "teacher", lite=int8_lite),
        Variant("v2", "dynamic-range", "dynamic-range quantization (int8 weights, float activations)",
                convert(served, "dynamic"), "teacher"),
        Variant("v3", "int8-uint8io", "full-integer int8, uint8 input/output (representative set: training split)",
                convert(served, "int8-uint8io", x_train), "teacher"),
        Variant("v4", "float16", "float16 weights", convert(served, "float16"), "teacher", lite=int8_lite),
    ]
    t0 = time.monotonic()
    tf.keras.utils.set_random_seed(seed + 1)
    pruned = prune(teacher, x_train, y_train, epochs["prune"])
    achieved = sparsity(pruned)
    log(f"pruned to sparsity {achieved:.3f} in {time.monotonic() - t0:.1f}s")
    variants.append(Variant("v5", "pruned-int8", f"magnitude pruning to {TARGET_SPARSITY:.0%} sparsity "
                            f"(tfmot, fine-tuned {epochs['prune']} epochs), then full-integer int8",
                            convert(with_softmax(pruned), "int8", x_train), "pruned",
                            extra={"sparsity": {"target": TARGET_SPARSITY, "achieved": round(achieved, 4),
                                                "layers": "Conv2D and Dense kernels"}}))
    t0 = time.monotonic()
    tf.keras.utils.set_random_seed(seed + 2)
    student = distill(teacher, x_train, y_train, epochs["student"], seed)
    log(f"student distilled in {time.monotonic() - t0:.1f}s ({student.count_params()} params)")
    variants.append(Variant("v6", "distilled-int8", f"knowledge distillation into a {student.count_params()}-parameter "
                            f"student (T={TEMPERATURE}, hard-label weight {ALPHA_HARD}), then full-integer int8",
                            convert(with_softmax(student), "int8", x_train), "student",
                            extra={"distillation": {"temperature": TEMPERATURE, "hard_label_weight": ALPHA_HARD,
                                                    "student_params": int(student.count_params()),
                                                    "teacher_params": int(teacher.count_params())}}))
    facts = {"teacher_params": int(teacher.count_params()), "student_params": int(student.count_params()),
             "pruned_sparsity": achieved, "pruned_kernels": prunable_kernels(pruned),
             "split": (x_train, y_train, x_test, y_test)}
    return variants, facts


def publish(variants: list[Variant], facts: dict[str, Any], *, repo: Path, name: str, seed: int,
            command: str, epochs: dict[str, int], log: Any = print) -> list[Path]:
    """Evaluate each variant with ai_edge_litert and ``pack()`` it as ``repo/name/vN``."""
    import tensorflow as tf

    from edged.repository.pack import pack

    x_train, y_train, x_test, y_test = facts["split"]
    dataset = f"sklearn digits test split ({len(y_test)} images, seed {seed})"
    baseline = evaluate(variants[0].data, x_test, y_test)
    paths = []
    with tempfile.TemporaryDirectory(prefix="edged-prepare-") as tmp:
        work = Path(tmp)
        labels = work / "labels.txt"
        labels.write_text("".join(f"{d}\n" for d in range(10)))
        for v in variants:
            acc = baseline if v.version == "v1" else evaluate(v.data, x_test, y_test)
            model_file = work / f"{v.version}.tflite"
            model_file.write_bytes(v.data)
            lite_file = None
            files = [v.data]
            if v.lite is not None:
                lite_file = work / f"{v.version}_lite.tflite"
                lite_file.write_bytes(v.lite)
                files.append(v.lite)
            it = interpreter(v.data)
            golden_inputs = []
            for i in range(GOLDEN):
                p = work / f"{v.version}_golden{i}.npy"
                np.save(p, to_input(it, x_test[i:i + 1]))
                golden_inputs.append(p)
            out = it.get_output_details()[0]
            integer_out = np.dtype(out["dtype"]).kind in "iu"
            # Integer kernels (softmax LUTs in particular) differ by one LSB between runtime
            # releases; the tolerance is one quantization step of the output, exact for floats.
            if integer_out:
                atol = 1.0
            elif v.technique in ("float32", "float16"):
                atol = 1e-5
            else:
                atol = 1.0 / 256 + 1e-6
            min_runtime, converter_min = min_runtime_for(files)
            ops, _ = model_ops(v.data)
            lite_acc = evaluate(v.lite, x_test, y_test) if v.lite is not None else None
            accuracy = {"metric": "top1", "value": round(acc, 4), "dataset": dataset,
                        "delta_vs_baseline": round(acc - baseline, 4),
                        "source_model": {"name": f"{name}/v1", "technique": "float32",
                                         "value": round(baseline, 4)}}
            if lite_acc is not None:
                accuracy["lite_value"] = round(lite_acc, 4)
            extra = {"technique": v.technique, "source": v.source, "size_bytes": len(v.data),
                     "lite_size_bytes": len(v.lite) if v.lite is not None else None,
                     "ops": ops, "converter_min_runtime_version": converter_min,
                     "interface": "uint8" if integer_out else "float32", **v.extra}
            created_by = {"command": command, "seed": seed, "epochs": dict(epochs), "tensorflow": tf.__version__,
                          "tf_keras": _keras().__version__, "script": "scripts/prepare_model.py"}
            notes = v.description
            if v.lite is not None:
                notes += "; model_lite.tflite: the float32 baseline quantized to full int8 with float32 I/O"
            if min_runtime:
                notes += (f"; needs tflite-runtime >= {min_runtime['tflite-runtime']} (the converter emits "
                          f"op versions newer than tflite-runtime {TFLITE_RUNTIME_LATEST} has)")
            target = repo / name / v.version
            if target.exists():
                raise SystemExit(f"{target} exists; versions are immutable (use a fresh --repo or remove it)")
            path = pack(model_file, name=name, version=v.version, repo=repo, labels=labels,
                        golden_inputs=golden_inputs, lite=lite_file, preprocessing=dict(PREPROCESSING),
                        accuracy=accuracy, min_runtime=min_runtime, notes=notes, created_by=created_by,
                        runtime="litert", atol=atol, extra=extra)
            log(f"{v.version} {v.technique:15s} {len(v.data):7d} B  acc {acc:.4f} ({acc - baseline:+.4f})"
                f"  min_runtime {min_runtime}")
            paths.append(path)
    return paths


# -- report ----------------------------------------------------------------------------------

def latency_in_process(data: bytes, x: np.ndarray, n: int = 500) -> float:
    """p50 ms of set_tensor + invoke + get_tensor with ai_edge_litert, 1 thread."""
    it = interpreter(data, threads=1)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    xs = to_input(it, x)
    times = []
    for i in range(n + 50):
        t = time.perf_counter()
        it.set_tensor(inp, xs[i % len(xs)][None])
        it.invoke()
        it.get_tensor(out)
        if i >= 50:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def latency_through_edged(repo: Path, name: str, versions: list[str], x: np.ndarray,
                          n: int = 300) -> dict[str, float]:
    """p50 ms of ``Client.predict`` per version: one daemon, each version swapped in with ``force``."""
    from edged.client import Client

    out: dict[str, float] = {}
    sock = Path(tempfile.mkdtemp(prefix="edged-r-", dir="/tmp"))  # ipc paths must stay short
    # Serve a copy: the daemon keeps swap/probation state in <repo>/.edged/, which must
    # neither end up in the committed zoo nor leak from one measurement into the next.
    served_repo = sock / "repo"
    shutil.copytree(repo, served_repo, ignore=shutil.ignore_patterns(".edged"))
    ep, cep = f"ipc://{sock}/p.sock", f"ipc://{sock}/c.sock"
    log = open(sock / "daemon.log", "wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "edged", "serve", "--models", str(served_repo), "--endpoint", ep,
                             "--control-endpoint", cep], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with Client(ep, timeout=10) as c, Client.control(cep, timeout=60) as ctl:
            deadline = time.monotonic() + 60
            while True:
                try:
                    c.health()
                    break
                except Exception:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"daemon did not start: {(sock / 'daemon.log').read_text()}") from None
                    time.sleep(0.2)
            for v in versions:
                ctl.call("swap", model=name, version=v, force=True)
                contract = json.loads((repo / name / v / "manifest.json").read_text())["contract"]
                inp = contract["inputs"][0]
                dtype = np.dtype(inp["dtype"])
                if dtype.kind in "iu":
                    q = inp["quantization"]
                    xs = np.clip(np.round(x / q["scale"] + q["zero_point"]), 0, 255).astype(dtype)
                else:
                    xs = x.astype(dtype)
                times = []
                for i in range(n + 30):
                    t = time.perf_counter()
                    r = c.predict(xs[i % len(xs)][None], model=name)
                    if i >= 30:
                        times.append(time.perf_counter() - t)
                if r.version != v:
                    raise RuntimeError(f"daemon answered with {r.version}, expected {v}")
                out[v] = statistics.median(times) * 1000
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(sock, ignore_errors=True)
    return out


def report(repo: Path, name: str, docs: Path, seed: int = 0) -> Path:
    """Measure every published version and write ``docs/models.md`` and the accuracy-vs-size plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edged.repository import layout

    versions = sorted((p.name for p in (repo / name).iterdir() if layout.version_number(p.name) is not None
                       and (p / "manifest.json").is_file()), key=layout.version_number)
    _, _, x_test, _ = load_split(seed)
    rows = []
    for v in versions:
        m = json.loads((repo / name / v / "manifest.json").read_text())
        data = (repo / name / v / "model.tflite").read_bytes()
        rows.append({"version": v, "manifest": m, "size": len(data), "gzipped": len(gzip.compress(data, 9, mtime=0)),
                     "p50": latency_in_process(data, x_test)})
    served = latency_through_edged(repo, name, versions, x_test)
    for r in rows:
        r["edged_p50"] = served[r["version"]]

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "osD^vP*X"
    for i, r in enumerate(rows):
        m = r["manifest"]
        # Several variants share an accuracy (and nearly a size): distinct markers and a legend,
        # not annotations that would print on top of each other.
        ax.scatter(r["size"] / 1024, m["accuracy"]["value"], s=60, marker=markers[i % len(markers)], alpha=0.8,
                   label=f"{r['version']} {m['technique']} ({r['size'] / 1024:.1f} KiB, {m['accuracy']['value']:.4f})")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("model.tflite size (KiB, log scale)")
    ax.set_ylabel("top-1 accuracy (digits test split)")
    ax.set_title(f"{name}: accuracy vs size")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    png = docs / "models_accuracy_vs_size.png"
    fig.savefig(png, dpi=100, metadata={"Software": None})  # no version string: stable bytes
    plt.close(fig)

    from ai_edge_litert import __version__ as litert_version  # type: ignore[attr-defined]

    first = rows[0]["manifest"]["created_by"]
    lines = [
        "# Model zoo: `digits` v1…v6",
        "",
        "<!-- generated by `python scripts/prepare_model.py --report`; edit the script, not this file -->",
        "",
        "`zoo/` holds the versions produced by the model preparation pipeline "
        "(`scripts/prepare_model.py`, needs `pip install -e '.[tools]'`, i.e. TensorFlow). "
        "Serve it with `edged serve --models zoo`.",
        "",
        "**Why `zoo/` and not `models/`:** `models/` holds only the bundled default "
        "(`scripts/make_default_model.py`: an integer-trained perceptron written with the flatbuffers "
        "schema, no TensorFlow, reproducible bit for bit with `--check`), so the quickstart and the test "
        "suite never need TensorFlow. The zoo is TensorFlow output: reproducible for a given seed on the "
        "same TensorFlow build, but not bit-identical across builds, so it lives apart and has its own "
        "CI job (`scripts/ci_tools.sh`).",
        "",
        "Produced by:",
        "",
        "```sh",
        f"{first['command']}          # TensorFlow {first.get('tensorflow')}, seed {first['seed']}",
        "python scripts/prepare_model.py --report   # this page and the plot",
        "```",
        "",
        "## Variants",
        "",
        f"Accuracy: top-1 on the held-out test split ({rows[0]['manifest']['accuracy']['dataset']}), "
        "measured by running the converted `.tflite` with ai_edge_litert. Latency: p50 of one "
        f"`[1, 8, 8, 1]` image; *in-process* is `set_tensor + invoke + get_tensor` with ai_edge_litert "
        f"{litert_version}, 1 thread; *through edged* is `edged.client.Client.predict` round trip to "
        "`edged serve --models zoo` over `ipc://` (each version swapped in with "
        "`ctl swap --force`), on a 2-core x86 VM.",
        "",
        "| version | technique | interface | model.tflite | gzipped | lite | accuracy | Δ vs float32 | "
        "in-process p50 | through edged p50 | min_runtime |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        m = r["manifest"]
        acc = m["accuracy"]
        lite = m["files"].get("model_lite.tflite")
        mr = m.get("min_runtime")
        lite_text = f"{lite['size'] / 1024:.1f} KiB" if lite else "–"
        lines.append(
            f"| {r['version']} | {m['technique']} | {m['interface']} | {r['size'] / 1024:.1f} KiB | "
            f"{r['gzipped'] / 1024:.1f} KiB | "
            f"{lite_text} | {acc['value']:.4f} | "
            f"{acc['delta_vs_baseline']:+.4f} | {r['p50'] * 1000:.1f} µs | {r['edged_p50']:.3f} ms | "
            f"{', '.join(f'{k} ≥ {v}' for k, v in mr.items()) if mr else '–'} |")
    lines += ["", "![accuracy vs size](models_accuracy_vs_size.png)", "", "## What each version is", ""]
    for r in rows:
        m = r["manifest"]
        lines.append(f"* **{r['version']}** – {m['notes']}. Ops: {', '.join(f'`{o}`' for o in m['ops'])}.")
    lines += [
        "",
        "## Decisions",
        "",
        "* **Interfaces.** Every version except v3 keeps the dtypes and shapes of the bundled model: float32 "
        "`[1, 8, 8, 1]` (raw digits pixels 0..16; preprocessing for encoded images as in `models/digits`) "
        "→ float32 `[1, 10]` probabilities (tensor names are the converter's: `serving_default_image:0`, "
        "`StatefulPartitionedCall:0`; the daemon compares dtypes and shapes, not names). The int8 versions v5/v6 quantize and dequantize inside the graph, so "
        "swapping between v1, v2, v4, v5, v6 needs no `--force`. **v3 has a uint8 input and output** "
        "(input scale 16/255, zero point 0; output scale 1/256) for integer-only accelerators; swapping "
        "to or from it is a contract change and needs `edged ctl swap v3 --force`.",
        "* **Lite variants.** v1 and v4 carry `model_lite.tflite`: the same baseline network "
        "quantized to full int8 with float32 I/O, so its contract is identical to `model.tflite`'s and it "
        "is 2–3× smaller and integer-only. v2 has none (its dynamic-range file is already as small as the "
        "int8 one); v3, v5 and v6 are already int8 and have no smaller sibling with the same contract.",
        "* **Golden tolerances.** Float versions: `atol 1e-5`. Integer kernels (notably the int8 softmax) "
        "may differ by one least-significant bit between runtime releases, so int8 versions use one "
        "output quantization step (1/256 for float outputs, 1 for v3's uint8 output).",
        "* **Pruning** uses tensorflow-model-optimization (`prune_low_magnitude`, `ConstantSparsity` "
        f"{TARGET_SPARSITY:.0%} on every Conv2D/Dense kernel, fine-tuned), which needs Keras 2: the "
        "pipeline builds every model with `tf_keras` and sets `TF_USE_LEGACY_KERAS=1`. The int8 file of a "
        "pruned model is not smaller (TFLite stores dense tensors); the gain is in compressed transfer "
        "size: the zeros compress (see the gzipped column: v5 against v3), and the achieved sparsity is "
        "recorded in the manifest.",
        "* **Distillation** trains a one-hidden-layer student on `α·CE(labels) + (1−α)·T²·KL(teacher_T ‖ "
        f"student_T)` with T = {TEMPERATURE}, α = {ALPHA_HARD}.",
        "* **min_runtime.** The converter writes the oldest runtime able to run a file into its "
        "`min_runtime_version` metadata (the newest op version it used). When that is newer than "
        f"tflite-runtime {TFLITE_RUNTIME_LATEST} (the last wheel on PyPI) the manifest gets "
        "`min_runtime: {\"tflite-runtime\": …}`, and a daemon on tflite-runtime 2.14 refuses the version "
        "with `needs tflite-runtime >= …, this daemon runs tflite-runtime 2.14.0` instead of failing in "
        "`AllocateTensors`.",
        "* **Runtime compatibility (measured).** Every `model.tflite` and `model_lite.tflite` loads and "
        "passes its golden samples on ai-edge-litert 2.3.0. On tflite-runtime 2.14.0 (`Interpreter("
        "model_path=…)` + `allocate_tensors()`) all load except v2, which fails with `Didn't find op for "
        "builtin opcode 'FULLY_CONNECTED' version '12'. An older version of this builtin might be "
        "supported. Are you using an old TFLite binary with a newer model? Registration failed.` "
        "(the dynamic-range converter's per-channel hybrid FULLY_CONNECTED, and CONV_2D v5). The "
        "converter's metadata says 2.17.0 for v2 and ≤ 1.15.0 for the others, which agrees, so v2's "
        "manifest has `min_runtime: {\"tflite-runtime\": \"2.17\"}` and `edged validate zoo/digits/v2 "
        "--runtime tflite-runtime` says `VALIDATION_FAILED: needs tflite-runtime >= 2.17, this daemon "
        "runs tflite-runtime 2.14.0; upgrade the runtime or publish a version converted for it`. (No "
        "tflite-runtime newer than 2.14 exists on PyPI: boards on tflite-runtime use v1, v3–v6.)",
        "* **Benchmark model.** `--bench-model PATH` writes the MobileNet-class 224×224×3 full-int8 model "
        "with `edged.testing.tflite_build.mobilenet_class_model()` (deterministic, no TensorFlow, loads "
        "on both runtimes), the same as `scripts/make_bench_model.py`.",
        "",
    ]
    md = docs / "models.md"
    md.write_text("\n".join(lines))
    return md


# -- CLI -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="output repository (default: zoo/)")
    p.add_argument("--name", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (pruning and student scale with it)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (tests, CI)")
    p.add_argument("--force", action="store_true", help="replace existing versions of --name in --repo")
    p.add_argument("--report", action="store_true", help="measure --repo and write docs/models.md and the plot")
    p.add_argument("--docs", type=Path, default=DOCS, help="where --report writes (default: docs/)")
    p.add_argument("--bench-model", type=Path, default=None, metavar="PATH",
                   help="write the MobileNet-class int8 benchmark model to PATH and exit")
    args = p.parse_args(argv)

    if args.bench_model:
        from edged.repository.manifest import file_entry
        from edged.testing.tflite_build import mobilenet_class_model

        args.bench_model.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.bench_model.with_name(f".{args.bench_model.name}.tmp")
        tmp.write_bytes(mobilenet_class_model(seed=args.seed))
        tmp.replace(args.bench_model)
        e = file_entry(args.bench_model)
        print(f"wrote {args.bench_model} ({e['size']} bytes, sha256 {e['sha256']})")
        return 0
    if args.report:
        print(f"wrote {report(args.repo, args.name, args.docs, args.seed)}")
        return 0

    epochs = dict(QUICK_EPOCHS if args.quick else EPOCHS)
    if args.epochs is not None:
        base = epochs["teacher"]
        epochs = {k: max(1, round(v * args.epochs / base)) for k, v in epochs.items()}
    command = COMMAND + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
                                if a != "--force")
    existing = args.repo / args.name
    if existing.exists():
        if not args.force:
            print(f"{existing} exists; versions are immutable. Use --force to rebuild it, or another --repo.",
                  file=sys.stderr)
            return 2
        shutil.rmtree(existing)
    t0 = time.monotonic()
    variants, facts = build_variants(args.seed, epochs)
    publish(variants, facts, repo=args.repo, name=args.name, seed=args.seed, command=command, epochs=epochs)
    print(f"published {len(variants)} versions to {args.repo / args.name} in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
