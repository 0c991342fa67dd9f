#!/usr/bin/env python3
"""Build the bundled default model ``models/digits/v1/`` (or check it is reproducible).

What it is: a linear softmax classifier of scikit-learn's 8×8 digits (the
dataset ships inside the package; nothing is downloaded), trained as an
*averaged perceptron* in integer arithmetic, held-out top-1 ≈ 0.96.

Why a perceptron and integers: ``--check`` promises that the committed files
are exactly what this script produces, in any supported environment.  Float
training (SGD, L-BFGS) goes through BLAS, whose summation order differs between
NumPy builds, so retrained weights drift in the last bits and hashes change.
Integer updates are exact on every platform.  The learned integer weights are
rescaled to ±127 (integer division, still exact) and stored as ``w · 2**-k``:
with inputs 0..16 every logit is a multiple of ``2**-k`` below ``2**24``, so
float32 FULLY_CONNECTED computes it exactly in any summation order, and the
golden outputs do not depend on the kernel.  ``k`` (the softmax temperature) is
chosen to minimise the training log-loss.

Input contract: ``image`` float32 ``[1, 8, 8, 1]`` holding raw digits values
0..16 (0 = background, 16 = ink), exactly what ``load_digits`` gives.  A real
image is a dark digit on a white background, so the manifest's preprocessing is
``{"color": "L", "mean": [0], "std": [15.9375], "invert": true}``: invert makes
ink bright (255) and 255 / 15.9375 = 16, the dataset's range.  Output ``probs``
float32 ``[1, 10]`` (softmax), labels "0".."9".

Accuracy is measured by running the written ``.tflite`` with ai_edge_litert over
the test split (25 %, a seeded permutation), not by the training code.

Usage::

    python scripts/make_default_model.py            # (re)write models/digits/v1
    python scripts/make_default_model.py --check    # exit 1 if models/ differs from a fresh build
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
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from edged.repository.manifest import Manifest, contract_from_details, file_entry, write_manifest  # noqa: E402
from edged.testing.tflite_build import float_mlp  # noqa: E402

NAME, VERSION = "digits", "v1"
COMMAND = "python scripts/make_default_model.py"
PREPROCESSING = {"color": "L", "mean": [0.0], "std": [15.9375], "invert": True}
TEST_FRACTION = 0.25
EPOCHS = 10
GOLDEN = 4


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as int64 pixels 0..16, split by a seeded permutation.

    ``RandomState`` (not ``default_rng``): NumPy guarantees its streams never
    change between releases, so the split is the same everywhere.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.int64)
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(seed).permutation(len(y))
    n_test = int(round(len(y) * TEST_FRACTION))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def train(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Averaged multiclass perceptron; returns integer weights [10, 64] and bias [10] in ±127."""
    rng = np.random.RandomState(seed + 1)
    w = np.zeros((10, x.shape[1]), np.int64)
    b = np.zeros(10, np.int64)
    w_sum = np.zeros_like(w)
    b_sum = np.zeros_like(b)
    for _ in range(EPOCHS):
        for i in rng.permutation(len(y)):
            pred = int(np.argmax(w @ x[i] + b))
            if pred != y[i]:
                w[y[i]] += x[i]
                w[pred] -= x[i]
                b[y[i]] += 16  # the bias "pixel" on the same 0..16 scale as the inputs
                b[pred] -= 16
            w_sum += w
            b_sum += b
    peak = int(max(np.abs(w_sum).max(), np.abs(b_sum).max()))
    # Round-half-up integer division: exact, unlike float division.
    return (w_sum * 127 + peak // 2) // peak, (b_sum * 127 + peak // 2) // peak


def pick_shift(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> int:
    """The ``k`` in ``logits = (w x + b) * 2**-k`` with the lowest training log-loss."""
    logits = (x @ w.T + b).astype(np.float64)
    best = (float("inf"), 0)
    for k in range(0, 16):
        z = logits * 2.0 ** -k
        z -= z.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        best = min(best, (round(nll, 6), k))
    return best[1]


def _interpreter(model: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    return it


def _predict(it: Any, image: np.ndarray) -> np.ndarray:
    it.set_tensor(it.get_input_details()[0]["index"], image)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def build(root: Path, seed: int = 0) -> Path:
    """Write ``<root>/digits/v1/`` (manifest last); returns the version directory.

    Raises ``RuntimeError`` if the model scores below 0.95 (something regressed).
    """
    x_train, y_train, x_test, y_test = load_split(seed)
    w, b = train(x_train, y_train, seed)
    scale = 2.0 ** -pick_shift(w, b, x_train, y_train)
    model = float_mlp([1, 8, 8, 1], [((w * scale).astype(np.float32), (b * scale).astype(np.float32))],
                      softmax=True, input_name="image", output_name="probs")

    vdir = root / NAME / VERSION
    # Rewriting in place: drop the manifest first so a watching daemon sees an
    # incomplete version rather than a complete one with changing files, and
    # drop old golden samples so none outlive this build.
    (vdir / "manifest.json").unlink(missing_ok=True)
    shutil.rmtree(vdir / "golden", ignore_errors=True)
    (vdir / "golden").mkdir(parents=True)
    (vdir / "model.tflite").write_bytes(model)
    (vdir / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))

    it = _interpreter(vdir / "model.tflite")
    images = x_test.astype(np.float32).reshape(-1, 1, 8, 8, 1)
    correct = sum(int(np.argmax(_predict(it, img))) == int(t) for img, t in zip(images, y_test))
    accuracy = correct / len(y_test)
    if accuracy < 0.95:
        raise RuntimeError(f"test accuracy {accuracy:.4f} < 0.95; refusing to write a worse default model")

    golden = []
    for i in range(GOLDEN):
        np.save(vdir / "golden" / f"{i}.input.npy", images[i])
        np.save(vdir / "golden" / f"{i}.output0.npy", _predict(it, images[i]))
        golden.append({"input": f"golden/{i}.input.npy", "outputs": [f"golden/{i}.output0.npy"],
                       "atol": 1e-5, "rtol": 1e-5})

    files = {"model.tflite": file_entry(vdir / "model.tflite"), "labels.txt": file_entry(vdir / "labels.txt")}
    for g in golden:
        for rel in [g["input"], *g["outputs"]]:
            files[rel] = file_entry(vdir / rel)
    manifest = Manifest(
        name=NAME, version=VERSION, files=files,
        contract=contract_from_details(it.get_input_details(), it.get_output_details()),
        preprocessing=dict(PREPROCESSING), golden=golden,
        accuracy={"metric": "top1", "value": round(accuracy, 4),
                  "dataset": f"sklearn digits test split ({len(y_test)} images, seed {seed})"},
        notes="averaged perceptron on raw 0..16 pixels; see scripts/make_default_model.py",
        created_by={"command": COMMAND, "seed": seed},
    )
    write_manifest(vdir, manifest)
    return vdir


def compare(expected: Path, actual: Path) -> list[str]:
    """Files that differ (by sha256) between two version directories, or exist in only one."""
    def listing(d: Path) -> dict[str, str]:
        return {p.relative_to(d).as_posix(): file_entry(p)["sha256"] for p in sorted(d.rglob("*")) if p.is_file()}

    want, got = listing(expected), listing(actual)
    problems = [f"{rel}: only in {expected}" for rel in sorted(set(want) - set(got))]
    problems += [f"{rel}: not in {expected}" for rel in sorted(set(got) - set(want))]
    problems += [f"{rel}: sha256 {want[rel][:12]} != rebuilt {got[rel][:12]}"
                 for rel in sorted(set(want) & set(got)) if want[rel] != got[rel]]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "models", help="repository root (default: models/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true",
                   help="rebuild in a temporary directory and compare with --models; exit 1 on any difference")
    args = p.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory(prefix="edged-digits-") as tmp:
            rebuilt = build(Path(tmp), args.seed)
            problems = compare(args.models / NAME / VERSION, rebuilt)
        if problems:
            print(f"{args.models / NAME / VERSION} is not reproducible from this script:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"ok: {args.models / NAME / VERSION} matches a fresh build")
        return 0
    vdir = build(args.models, args.seed)
    print(f"wrote {vdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
