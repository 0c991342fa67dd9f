"""``edged pack``: build a complete version directory and move it into place atomically.

Everything is assembled in a hidden staging directory next to the target
(``<repo>/<name>/.staging-<version>-<pid>``, ignored by scans and by the
watcher's candidate logic): files copied, the contract read from the model,
golden outputs computed by running the golden inputs through the same runtime
the daemon uses, hashes computed, ``manifest.json`` written last.  Then one
``rename`` makes the version appear complete; a watching daemon never sees a
half-written version.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import ErrorCode, ModelError, RequestError
from edged.repository import layout
from edged.repository.check import check_lite
from edged.repository.manifest import Manifest, ManifestError, contract_from_details, file_entry, write_manifest


def pack(
    model_file: Path,
    *,
    name: str,
    version: str,
    repo: Path,
    labels: Path | None = None,
    golden_inputs: Sequence[Path] = (),
    lite: Path | None = None,
    edgetpu: Path | None = None,
    preprocessing: dict[str, Any] | None = None,
    accuracy: dict[str, Any] | None = None,
    min_runtime: dict[str, str] | None = None,
    notes: str = "",
    created_by: dict[str, Any] | None = None,
    runtime: str = "auto",
    atol: float = 1e-5,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Create ``repo/name/version``; returns its path.

    Raises :class:`RequestError` for bad names or an existing version, and
    :class:`ModelError` when the model does not load or a golden input does not
    fit it (nothing is left behind in the repository).
    """
    from edged.runtime.backends import select_backend

    layout.check_name("model", name)
    layout.check_name("version", version)
    if layout.version_number(version) is None:
        raise RequestError(f"version {version!r} must be v<N> or <N>")
    target = repo / name / version
    if target.exists():
        raise RequestError(f"{target} already exists; versions are immutable, publish a new one",
                           code=ErrorCode.INVALID_STATE)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        shutil.copyfile(model_file, staging / layout.MODEL_FILE)
        for src, dest in ((labels, layout.LABELS_FILE), (lite, "model_lite.tflite"), (edgetpu, "model_edgetpu.tflite")):
            if src is not None:
                shutil.copyfile(src, staging / dest)
        backend = select_backend(runtime)
        try:
            interp = backend.interpreter_cls(model_content=(staging / layout.MODEL_FILE).read_bytes())
            interp.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"{model_file}: does not load with {backend.describe()}: {exc}") from None
        ins, outs = interp.get_input_details(), interp.get_output_details()
        if lite is not None:
            try:  # the same check the daemon's validation runs
                check_lite(staging, backend, "xnnpack", None, contract_from_details(ins, outs))
            except ModelError as exc:
                raise ModelError(f"{lite} (--lite): does not load as a drop-in replacement for the model: "
                                 f"{exc.message}") from None
        golden = []
        if golden_inputs:
            (staging / "golden").mkdir()
        for i, src in enumerate(golden_inputs):
            x = np.load(src, allow_pickle=False)
            arrays = [x] if len(ins) == 1 else [x[k] for k in range(len(ins))]
            for d, a in zip(ins, arrays):
                if a.dtype != d["dtype"] or list(a.shape) != list(d["shape"]):
                    raise ModelError(f"golden input {src}: {a.dtype}{list(a.shape)} does not fit input "
                                     f"{d['name']} {np.dtype(d['dtype']).name}{list(d['shape'])}")
                interp.set_tensor(d["index"], a)
            interp.invoke()
            np.save(staging / "golden" / f"{i}.input.npy", x)
            out_paths = []
            for j, d in enumerate(outs):
                np.save(staging / "golden" / f"{i}.output{j}.npy", interp.get_tensor(d["index"]))
                out_paths.append(f"golden/{i}.output{j}.npy")
            golden.append({"input": f"golden/{i}.input.npy", "outputs": out_paths, "atol": atol, "rtol": atol})
        files = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            files[path.relative_to(staging).as_posix()] = file_entry(path)
        manifest = Manifest(name=name, version=version, files=files, contract=contract_from_details(ins, outs),
                            preprocessing=preprocessing, golden=golden, accuracy=accuracy, min_runtime=min_runtime,
                            notes=notes, created_by=created_by, extra=dict(extra or {}))
        try:
            write_manifest(staging, manifest)
        except ManifestError as exc:
            raise RequestError(f"the manifest would be invalid: {exc}") from None
        os.rename(staging, target)
        layout.fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
