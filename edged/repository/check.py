"""Validate a candidate version in an isolated child process, with a time limit.

A model can crash the runtime (a segfault in a kernel, a missing custom op that
aborts, an allocation that never returns).  So the daemon never tries a new
version in its own process first: :func:`validate_in_child` runs
``python -m edged.repository.check DIR`` which loads the model, allocates, runs
the golden samples from the manifest (or generated inputs when there are none),
checks that every output is finite and within tolerance, and prints one JSON
line.  A crash, a hang past the time limit, or a bad answer rejects the version
with a reason; the serving version is never touched.

The same checks back ``edged validate DIR`` (offline, in-process).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import InvalidVersion, Version

from edged import fsafe
from edged.config import ServerConfig
from edged.errors import EdgedError, ErrorCode, ModelError, RetryableError
from edged.repository import layout
from edged.runtime.backends import select_backend
from edged.runtime.model import LITE_MODEL, LoadedModel, LoadSpec

log = logging.getLogger("edged.repository")

VALIDATION_NICE = 19  # the child's niceness (see _lower_priority)


class ValidationStarved(RetryableError):
    """The child ran out of time waiting for a CPU, not computing: the version is not at fault."""

    code = ErrorCode.VALIDATION_FAILED


def static_checks(path: Path) -> dict[str, Any] | None:
    """Manifest and file checks that need no runtime; returns the manifest dict (or None).

    Raises :class:`ModelError` (``VALIDATION_FAILED``) naming the problem: bad
    manifest, missing/truncated file, sha256 mismatch, name/version mismatch.
    """
    from edged.repository.manifest import ManifestError, load_manifest, verify_files

    try:
        fsafe.check_regular(path, layout.MODEL_FILE)  # no link, FIFO or device, even unlisted
    except FileNotFoundError:
        raise ModelError(f"{path}: no {layout.MODEL_FILE}", code=ErrorCode.VALIDATION_FAILED) from None
    except ModelError as exc:
        raise ModelError(f"{path}: {exc.message}", code=ErrorCode.VALIDATION_FAILED) from None
    except OSError as exc:
        raise ModelError(f"{path}: {layout.MODEL_FILE} unreadable ({exc.strerror})",
                         code=ErrorCode.VALIDATION_FAILED) from None
    try:
        manifest = load_manifest(path)
    except FileNotFoundError:
        return None
    except (ManifestError, ValueError) as exc:
        raise ModelError(f"{path}: bad manifest: {exc}", code=ErrorCode.VALIDATION_FAILED) from None
    problems = verify_files(path, manifest)
    if problems:
        raise ModelError(f"{path}: " + "; ".join(problems), code=ErrorCode.VALIDATION_FAILED)
    data = manifest.to_dict()
    if data.get("version") and data["version"] != path.name:
        raise ModelError(f"{path}: manifest says version {data['version']!r}, directory is {path.name!r}",
                         code=ErrorCode.VALIDATION_FAILED)
    if data.get("name") and data["name"] != path.parent.name:
        raise ModelError(f"{path}: manifest says model {data['name']!r}, directory is {path.parent.name!r}",
                         code=ErrorCode.VALIDATION_FAILED)
    return data


def _read_version_file(path: Path, rel: str, what: str, *, max_bytes: int | None = None) -> bytes:
    """``rel`` of the version at ``path``, read through :mod:`edged.fsafe` (a regular file, no link, no FIFO).

    The one place a read error of a golden file becomes the project's error: raises
    :class:`ModelError` (``VALIDATION_FAILED``) naming ``rel`` and ``what`` when the file
    is missing or unreadable; fsafe's own refusals (a link, a FIFO, over ``max_bytes``,
    the time limit) are already :class:`ModelError` naming ``rel`` and pass through.
    """
    try:
        return fsafe.read_bytes(path, rel, max_bytes=max_bytes)
    except FileNotFoundError:
        raise ModelError(f"{rel}: {what} missing", code=ErrorCode.VALIDATION_FAILED) from None
    except OSError as exc:
        raise ModelError(f"{rel}: {what} not readable ({exc.strerror or exc})",
                         code=ErrorCode.VALIDATION_FAILED) from None
    except ValueError as exc:  # a path the OS cannot take (an embedded NUL)
        raise ModelError(f"{rel}: {what} not readable ({exc})", code=ErrorCode.VALIDATION_FAILED) from None


def _load_npy(path: Path, rel: str) -> np.ndarray:
    """A golden sample: a regular file of the version (edged.fsafe), no pickles."""
    data = _read_version_file(path, rel, "golden sample")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty file
        raise ModelError(f"{rel}: not a readable .npy file ({exc})", code=ErrorCode.VALIDATION_FAILED) from None
    if not isinstance(array, np.ndarray):  # np.load opens a zip (.npz) by its content, whatever the name
        array.close()
        raise ModelError(f"{rel}: an .npz archive, not a .npy array", code=ErrorCode.VALIDATION_FAILED)
    return array


#: Golden images are held to the daemon's default image limits (``server.max_image_bytes``,
#: ``max_image_pixels``): what validation decodes, the daemon would decode too.
GOLDEN_IMAGE_MAX_BYTES = ServerConfig().max_image_bytes
GOLDEN_IMAGE_MAX_PIXELS = ServerConfig().max_image_pixels


def read_golden_image(path: Path, rel: str) -> bytes:
    """A golden image: a regular file (edged.fsafe: no link, no FIFO) of at most ``GOLDEN_IMAGE_MAX_BYTES``."""
    return _read_version_file(path, rel, "golden image", max_bytes=GOLDEN_IMAGE_MAX_BYTES)


def check_min_runtime(manifest: dict[str, Any] | None, backend_name: str, backend_version: str) -> None:
    """Refuse a version whose manifest needs a newer runtime than the one loaded.

    ``min_runtime`` is ``{"litert": "2.0", "tflite-runtime": "2.16"}``; a backend
    not listed is assumed fine.  Raises :class:`ModelError` with both versions.
    """
    need = ((manifest or {}).get("min_runtime") or {}).get(backend_name)
    if not need or backend_version == "?":
        return
    # PEP 440 ordering: "2.17rc1" is after 2.16 and before 2.17 (a hand-rolled split
    # on dots read it as 2).
    try:
        required = Version(str(need))
    except InvalidVersion:
        raise ModelError(f"min_runtime {backend_name} = {need!r} is not a version number",
                         code=ErrorCode.VALIDATION_FAILED) from None
    try:
        running = Version(backend_version)
    except InvalidVersion:
        log.warning("cannot compare %s version %r with min_runtime %s", backend_name, backend_version, need)
        return
    if running < required:
        raise ModelError(f"needs {backend_name} >= {need}, this daemon runs {backend_name} {backend_version}; "
                         f"upgrade the runtime or publish a version converted for it",
                         code=ErrorCode.VALIDATION_FAILED)


def run_checks(path: Path, runtime: str = "auto", delegate: str = "auto") -> dict[str, Any]:
    """Load ``path`` and run its golden samples in *this* process.

    Returns ``{"ok": True, "contract": ..., "samples": n, "golden": bool}``.
    Raises :class:`ModelError` (``VALIDATION_FAILED``/``MODEL_LOAD_FAILED``).
    """
    manifest = static_checks(path)
    backend = select_backend(runtime)
    check_min_runtime(manifest, backend.name, backend.version)
    model = LoadedModel.load(LoadSpec(path.parent.name, path.name, path, backend, delegate=delegate, workers=1,
                                      preprocessing=(manifest or {}).get("preprocessing"), manifest=manifest))
    contract = model.contract()
    if manifest and manifest.get("contract"):
        # dtypes and shapes only: the manifest format lets a hand-written contract leave
        # quantization out (read back as 0/0), and the model file is the authority on it.
        declared, actual = _contract_key(manifest["contract"], False), _contract_key(contract, False)
        if declared != actual:
            raise ModelError(f"manifest contract {declared} does not match the model {actual}",
                             code=ErrorCode.VALIDATION_FAILED)
    golden = (manifest or {}).get("golden") or []
    samples = 0
    if golden:
        for i, g in enumerate(golden):
            inputs = g["input"] if isinstance(g["input"], list) else [g["input"]]
            arrays = [_load_npy(path, p) for p in inputs]
            result = model.run(model.arrange([None] * len(arrays), arrays))
            atol, rtol = float(g.get("atol", 1e-5)), float(g.get("rtol", 1e-5))
            for j, (out, expected_path) in enumerate(zip(result.outputs, g["outputs"])):
                expected = _load_npy(path, expected_path)
                _finite(out, f"golden {i} output {j}")
                if out.shape != expected.shape or not np.allclose(out.astype(np.float64), expected.astype(np.float64),
                                                                  atol=atol, rtol=rtol):
                    diff = float(np.max(np.abs(out.astype(np.float64) - expected.astype(np.float64)))) \
                        if out.shape == expected.shape else float("nan")
                    raise ModelError(f"golden sample {i} output {j} differs from the manifest (max |diff| {diff:.3g}, "
                                     f"atol {atol}, rtol {rtol})", code=ErrorCode.VALIDATION_FAILED)
            samples += 1
    images = (manifest or {}).get("golden_images") or []
    for i, g in enumerate(images):
        top1, score = image_top1(model, read_golden_image(path, g["file"]))
        if top1 != g["top1"] or abs(score - g["score"]) > float(g.get("atol", GOLDEN_IMAGE_ATOL)):
            raise ModelError(f"golden image {g['file']} answers {_class_text(model, top1)} {score:.3f}, the manifest "
                             f"expects {_class_text(model, g['top1'])} {g['score']:.3f} (atol "
                             f"{g.get('atol', GOLDEN_IMAGE_ATOL)}): is the preprocessing right?",
                             code=ErrorCode.VALIDATION_FAILED)
        samples += 1
    if not golden and not images:
        rng = np.random.default_rng(0)
        for _ in range(3):
            arrays = [_random_input(rng, t) for t in model.inputs]
            result = model.run(arrays)
            for j, out in enumerate(result.outputs):
                _finite(out, f"generated input, output {j}")
            samples += 1
    report = {"ok": True, "contract": contract, "samples": samples, "golden": bool(golden or images),
              "runtime": backend.describe(), "delegate": model.delegate}
    if (path / LITE_MODEL).is_file():
        report["lite"] = check_lite(path, backend, delegate, manifest, contract)
    return report


#: Default tolerance on a golden image's top-1 score (scores are in [0, 1] for a softmax).
GOLDEN_IMAGE_ATOL = 0.02


def image_top1(model: LoadedModel, data: bytes) -> tuple[int, float]:
    """Decode ``data`` with the model's preprocessing (the daemon's own code), run it,
    and return the top-1 class of output 0 and its (dequantized) score.

    Raises :class:`ModelError` (``VALIDATION_FAILED``) when the model is not a
    single-image-input classifier or the image does not decode.
    """
    if len(model.inputs) != 1:
        raise ModelError(f"golden images need a single-input model, this one has {len(model.inputs)}",
                         code=ErrorCode.VALIDATION_FAILED)
    try:
        x = model.image_input(data, 0, max_pixels=GOLDEN_IMAGE_MAX_PIXELS)
    except EdgedError as exc:
        raise ModelError(f"golden image: {exc.message}", code=ErrorCode.VALIDATION_FAILED) from None
    result = model.run([x])
    top = model.top_k(result.outputs, 1)
    if not top:
        raise ModelError("golden images need a classifier (output 0 of shape [1, N] or [N])",
                         code=ErrorCode.VALIDATION_FAILED)
    _finite(result.outputs[0], "golden image output 0")
    return int(top[0]["index"]), float(top[0]["score"])


def _class_text(model: LoadedModel, index: int) -> str:
    labels = model.labels or []
    return f"{index} ({labels[index]})" if index < len(labels) and labels[index] != str(index) else str(index)


def check_lite(path: Path, backend: Any, delegate: str, manifest: dict[str, Any] | None,
               contract: dict[str, Any]) -> dict[str, Any]:
    """The power-saving variant must load, keep the contract and give finite outputs.

    Golden samples belong to ``model.tflite`` (a lighter model answers a little
    differently), so the lite file is run on generated inputs only.  Raises
    :class:`ModelError` (``VALIDATION_FAILED``) naming the problem.
    """
    # Never the Edge TPU file: with "auto" and a model_edgetpu.tflite present the plan would
    # load that instead, and the lite file is what serves when the accelerator is gone.
    lite_delegate = "xnnpack" if delegate in ("auto", "edgetpu") else delegate
    try:
        lite = LoadedModel.load(LoadSpec(path.parent.name, path.name, path, backend, delegate=lite_delegate,
                                         workers=1, variant="lite", manifest=manifest))
    except EdgedError as exc:
        raise ModelError(f"{LITE_MODEL}: {exc.message}", code=ErrorCode.VALIDATION_FAILED) from None
    if not same_contract(lite.contract(), contract):
        raise ModelError(f"{LITE_MODEL} has a different contract from {layout.MODEL_FILE} "
                         f"({contract_text(lite.contract())} vs {contract_text(contract)})",
                         code=ErrorCode.VALIDATION_FAILED)
    rng = np.random.default_rng(0)
    for _ in range(3):
        result = lite.run([_random_input(rng, t) for t in lite.inputs])
        for j, out in enumerate(result.outputs):
            _finite(out, f"{LITE_MODEL}: generated input, output {j}")
    return {"ok": True, "delegate": lite.delegate}


def _contract_key(contract: dict[str, Any], quantization: bool = True) -> list[Any]:
    return [[_tensor_key(t, quantization) for t in contract.get(k, [])] for k in ("inputs", "outputs")]


def _tensor_key(t: dict[str, Any], quantization: bool = True) -> tuple[Any, ...]:
    key: tuple[Any, ...] = (t.get("dtype"), list(t.get("shape", [])))
    if quantization and np.dtype(t.get("dtype") or "float32").kind in "iu":
        # A client that quantizes its inputs (or dequantizes outputs) with the
        # published scale/zero point would get silently wrong answers if they moved.
        q = t.get("quantization") or {}
        key += (float(f"{float(q.get('scale', 0.0)):.6g}"), int(q.get("zero_point", 0)))
    return key


def contract_text(contract: dict[str, Any]) -> str:
    """``uint8[1, 224, 224, 3](q 0.0078,128) -> uint8[1, 1000](q 0.0627,128)``: what same_contract compares."""
    def side(ts: list[dict[str, Any]]) -> str:
        return ",".join(f"{k[0]}{k[1]}" + (f"(q {k[2]:g},{k[3]})" if len(k) > 2 else "")
                        for k in (_tensor_key(t) for t in ts))

    return f"{side(contract.get('inputs', []))} -> {side(contract.get('outputs', []))}"


def same_contract(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Inputs/outputs have the same dtypes, shapes and, for integer tensors, quantization.

    Tensor names may change (converters rename them); a float tensor's quantization
    parameters mean nothing to a client and are not compared.
    """
    return _contract_key(a) == _contract_key(b)


def _finite(out: np.ndarray, what: str) -> None:
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise ModelError(f"{what} has non-finite values (NaN/inf)", code=ErrorCode.VALIDATION_FAILED)


def _random_input(rng: np.random.Generator, spec: Any) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.random(spec.shape, dtype=np.float32).astype(spec.dtype)
    if spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        return rng.integers(info.min, info.max, spec.shape, dtype=spec.dtype, endpoint=True)
    return np.zeros(spec.shape, spec.dtype)


def validate_in_child(path: Path, *, runtime: str, delegate: str, timeout: float) -> dict[str, Any]:
    """Run :func:`run_checks` in a fresh Python process; return its report.

    Raises :class:`ModelError` (``VALIDATION_FAILED``) when the child crashes
    (signal), hangs past ``timeout``, or reports a failure.
    """
    cmd = [sys.executable, "-m", "edged.repository.check", str(path), "--runtime", runtime, "--delegate", delegate]
    # One BLAS thread: the child never multiplies big matrices, and OpenBLAS's start-up
    # threads would otherwise spin on the cores that are serving requests.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    # Popen, not run(preexec_fn=...): a preexec_fn forces fork() of this big, threaded
    # process, where without one CPython uses vfork(), which costs the serving threads nothing.
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as child:
        _lower_priority(child.pid)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            waited = run_delay_s(child.pid)  # before the kill: /proc/PID goes with the child
            child.kill()
            child.communicate()
            if waited is not None and waited >= timeout / 2:
                raise ValidationStarved(
                    f"validation did not finish within {timeout:.0f}s because the machine was too busy to run "
                    f"it (it waited {waited:.0f}s for a CPU); it will be tried again") from None
            raise ModelError(f"validation hung: no result within {timeout:.0f}s",
                             code=ErrorCode.VALIDATION_FAILED) from None
        except BaseException:  # interrupted: never leave the child running
            child.kill()
            raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        report = json.loads(last) if last else None
    except ValueError:
        report = None
    if proc.returncode < 0:
        raise ModelError(f"validation crashed the runtime (signal {-proc.returncode}); "
                         f"{_tail(proc.stderr)}", code=ErrorCode.VALIDATION_FAILED)
    if not isinstance(report, dict):
        raise ModelError(f"validation exited {proc.returncode} without a report: {_tail(proc.stderr)}",
                         code=ErrorCode.VALIDATION_FAILED)
    if not report.get("ok"):
        raise ModelError(str(report.get("error", "validation failed")), code=ErrorCode.VALIDATION_FAILED)
    return report


def _lower_priority(pid: int) -> None:
    """Nice 19: on a 2-core board serving must win the CPU over validation.

    At nice 19 the child still gets ~1.4 % of a core that is busy with serving, ~0.4 s
    of CPU in the default 30 s limit, where it needs 0.2-0.4 s for a 4 MB model.  A
    child that runs out of time *waiting* for a CPU is told apart from one that hangs
    (see :func:`run_delay_s`): the version is retried later, not rejected.  Not
    ``SCHED_IDLE``, which would get no CPU at all under sustained full load.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, pid, VALIDATION_NICE)
    except OSError:  # not permitted in some sandboxes, or already gone: validate as it is
        pass


def run_delay_s(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Seconds ``pid``'s main thread has spent runnable but waiting for a CPU; None if unknown.

    The second field of ``/proc/PID/schedstat`` (nanoseconds).  A hung child sleeps or
    spins and barely waits; a starved one has waited most of its life.
    """
    try:
        return int((proc / str(pid) / "schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _tail(text: str, n: int = 300) -> str:
    text = " ".join(text.strip().split())
    return text[-n:] if text else "no output"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m edged.repository.check")
    p.add_argument("path")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--delegate", default="auto")
    args = p.parse_args(argv)
    try:
        report = run_checks(Path(args.path), args.runtime, args.delegate)
    except EdgedError as exc:
        print(json.dumps({"ok": False, "error": exc.message, "code": exc.code.value}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
