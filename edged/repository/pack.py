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
from typing import Any, Literal

import numpy as np

from edged.errors import ErrorCode, ModelError, RequestError
from edged.repository import layout
from edged.repository.check import GOLDEN_IMAGE_ATOL, check_lite, contract_text, image_top1, read_golden_image
from edged.repository.manifest import (
    Manifest, ManifestError, contract_from_details, file_entry, load_manifest, write_manifest,
)
from edged.repository.state import STATE_DIR, StateStore
from edged.runtime.files import EDGETPU_MODEL, LITE_MODEL
from edged.runtime.model import LoadedModel, LoadSpec


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
    golden_images: Sequence[tuple[Path, str | None]] = (),
    inherit_from: tuple[str, Manifest] | None | Literal["find"] = "find",
) -> Path:
    """Create ``repo/name/version``; returns its path.

    ``inherit_from``: the version whose preprocessing (when ``preprocessing`` is
    None) and golden images (when none are given) the new one takes, so re-packing
    a model cannot silently change how its images are read.  By default (``"find"``)
    it is :func:`base_manifest`, the version this one follows; a caller that has
    looked that up already passes it (``edged pack`` does, to report the
    differences); None takes nothing (``--no-inherit``, or a new model).
    ``golden_images``: ``(file, expected label or index or None)``; each is run
    through the daemon's preprocessing and its top-1 recorded, and the pack is
    refused when it is not the expected one.

    Raises :class:`RequestError` for bad names or an existing version, and
    :class:`ModelError` when the model does not load, a golden input does not
    fit it or a golden image answers wrongly (nothing is left behind in the
    repository).
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
    base = base_manifest(repo, name) if inherit_from == "find" else inherit_from
    inherited_images: list[dict[str, Any]] = []
    if base is not None:
        if preprocessing is None:
            preprocessing = base[1].preprocessing
        if not golden_images:
            inherited_images = base[1].golden_images
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        shutil.copyfile(model_file, staging / layout.MODEL_FILE)
        for src, dest in ((labels, layout.LABELS_FILE), (lite, LITE_MODEL), (edgetpu, EDGETPU_MODEL)):
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
        images = _golden_images(staging, name, version, backend, preprocessing, golden_images,
                                inherited_images, base, atol=GOLDEN_IMAGE_ATOL)
        files = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            files[path.relative_to(staging).as_posix()] = file_entry(path)
        manifest = Manifest(name=name, version=version, files=files, contract=contract_from_details(ins, outs),
                            preprocessing=preprocessing, golden=golden, golden_images=images,
                            accuracy=accuracy, min_runtime=min_runtime,
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


def base_manifest(repo: Path, name: str) -> tuple[str, Manifest] | None:
    """The version of ``name`` a new one follows, and its manifest; None for a new model.

    The serving version (what ``current`` points at), else the committed one (the
    state file a daemon keeps), else the highest version with a readable manifest.
    """
    model_dir = repo / name
    versions = layout.version_names(model_dir)
    if not versions:
        return None
    committed = StateStore(repo).get(name).committed if (repo / STATE_DIR).is_dir() else None
    order = [v for v in (layout.current_link(model_dir), committed) if v in versions] + versions[::-1]
    for v in order:
        try:
            return v, load_manifest(model_dir / v)
        except (OSError, ManifestError):
            continue
    return None


def _golden_images(staging: Path, name: str, version: str, backend: Any, preprocessing: dict[str, Any] | None,
                   given: Sequence[tuple[Path, str | None]], inherited: list[dict[str, Any]],
                   base: tuple[str, Manifest] | None, *, atol: float) -> list[dict[str, Any]]:
    """Copy the golden images into ``staging/golden`` and record their top-1 (checked against what is expected)."""
    if not given and not inherited:
        return []
    model = LoadedModel.load(LoadSpec(name, version, staging, backend, delegate="xnnpack", workers=1,
                                      preprocessing=preprocessing, labels=layout.read_labels(staging)))
    (staging / "golden").mkdir(exist_ok=True)
    todo: list[tuple[bytes, str, str | None, str]] = []  # data, suffix, expected, where it came from
    for src, expected in given:
        real = Path(src).resolve()  # the operator's own file may be a link; the version's copy never is
        try:
            data = read_golden_image(real.parent, real.name)
        except ModelError as exc:
            raise ModelError(f"--golden-image {src}: {exc.message}", code=exc.code) from None
        todo.append((data, Path(src).suffix.lower() or ".img", expected, str(src)))
    for g in inherited:
        assert base is not None
        where = f"{g['file']} (inherited from {base[0]}; --golden-image replaces, --no-inherit drops them)"
        try:
            data = read_golden_image(staging.parent / base[0], g["file"])
        except ModelError as exc:
            raise ModelError(f"{base[0]}/{exc.message}; {where}", code=exc.code) from None
        todo.append((data, Path(g["file"]).suffix or ".img", g.get("label") or str(g["top1"]), where))
    out = []
    for i, (data, suffix, expected, where) in enumerate(todo):
        top1, score = image_top1(model, data)
        labels = model.labels or []
        label = labels[top1] if top1 < len(labels) else str(top1)
        if expected is not None and expected not in (label, str(top1)):
            raise ModelError(f"golden image {where}: the model answers {label} ({score:.3f}), expected {expected}; "
                             f"check --preprocessing (now {preprocessing}) and the labels",
                             code=ErrorCode.VALIDATION_FAILED)
        rel = f"golden/image{i}{suffix}"
        (staging / rel).write_bytes(data)
        out.append({"file": rel, "top1": top1, "label": label, "score": round(score, 6), "atol": atol})
    return out


def differences(old: Manifest, new: Manifest) -> list[str]:
    """What a new version changes from the one it follows, one line each (``edged pack`` prints them)."""
    out = []

    def digest(m: Manifest, f: str) -> str | None:
        entry = m.files.get(f)
        return entry["sha256"] if entry else None

    if old.contract != new.contract and old.contract and new.contract:
        out.append(f"contract: {contract_text(old.contract)} -> {contract_text(new.contract)}")
    if old.preprocessing != new.preprocessing:
        out.append(f"preprocessing: {_json(old.preprocessing)} -> {_json(new.preprocessing)}")
    for f in (layout.MODEL_FILE, layout.LABELS_FILE, LITE_MODEL, EDGETPU_MODEL):
        a, b = digest(old, f), digest(new, f)
        if a != b:
            out.append(f"{f}: " + ("added" if a is None else "removed" if b is None else "changed"))
    for key in ("accuracy", "min_runtime"):
        if getattr(old, key) != getattr(new, key):
            out.append(f"{key}: {_json(getattr(old, key))} -> {_json(getattr(new, key))}")
    if len(old.golden) != len(new.golden):
        out.append(f"golden samples: {len(old.golden)} -> {len(new.golden)}")
    if len(old.golden_images) != len(new.golden_images):
        out.append(f"golden images: {len(old.golden_images)} -> {len(new.golden_images)}")
    return out


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(", ", ": "))
