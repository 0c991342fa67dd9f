"""``manifest.json``: the record that makes a version directory complete.

The format (version 1) is described in docs/architecture.md.  This module
parses and validates it (:meth:`Manifest.from_dict`, :func:`load_manifest`),
writes it atomically (:func:`write_manifest`; a manifest is written *last*, so a
half-copied version never looks complete), and checks the files it lists
(:func:`verify_files`).  It needs no runtime: :func:`contract_from_details`
takes the plain dicts an interpreter's ``get_input_details()`` returns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from packaging.version import InvalidVersion, Version

from edged import fsafe
from edged.errors import ModelError
from edged.protocol import DTYPES
from edged.repository.layout import MANIFEST_FILE, MODEL_FILE, write_atomic

FORMAT = 1
#: A manifest is a few KB; anything far larger is not one.
MAX_MANIFEST_BYTES = 16 << 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION_RE = re.compile(r"^v?\d+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = frozenset(DTYPES)  # a contract speaks the wire's dtypes
_KNOWN_KEYS = ("format", "name", "version", "files", "contract", "preprocessing", "golden", "golden_images",
               "accuracy", "min_runtime", "notes", "created_by")


class ManifestError(ValueError):
    """A manifest is unreadable or breaks the format; the message names the field.

    The version it belongs to must not be served; fix or regenerate the manifest
    (``scripts/make_default_model.py`` shows how one is produced).
    """


@dataclass
class Manifest:
    """A parsed, validated ``manifest.json`` (format 1).

    Nested objects stay plain JSON-able dicts (they were validated on the way
    in); unknown top-level keys are kept in ``extra`` and written back, so an
    older daemon does not drop fields a newer tool added.
    """

    name: str
    version: str
    files: dict[str, dict[str, Any]]
    contract: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    golden: list[dict[str, Any]] = field(default_factory=list)
    #: Encoded images run through the daemon's own preprocessing: ``{"file", "top1",
    #: "label", "score", "atol"}`` – a preprocessing change that alters answers is refused.
    golden_images: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, Any] | None = None
    min_runtime: dict[str, str] | None = None
    notes: str = ""
    created_by: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate ``data`` (parsed JSON); raises :class:`ManifestError` naming the first bad field."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FORMAT or isinstance(fmt, bool):
            raise ManifestError(f"format: expected {FORMAT}, got {fmt!r}")
        name = _check_str(data, "name", _NAME_RE, "a model name ([A-Za-z0-9][A-Za-z0-9_.-]*)")
        version = _check_str(data, "version", _VERSION_RE, "a version name (v<N> or <N>)")
        return cls(
            name=name,
            version=version,
            files=_check_files(data.get("files")),
            contract=_check_contract(data.get("contract")),
            preprocessing=_check_preprocessing(data.get("preprocessing")),
            golden=_check_golden(data.get("golden")),
            golden_images=_check_golden_images(data.get("golden_images")),
            accuracy=_check_accuracy(data.get("accuracy")),
            min_runtime=_check_min_runtime(data.get("min_runtime")),
            notes=_check_optional_str(data, "notes"),
            created_by=_check_object(data, "created_by"),
            extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the documented order (stable output for hashing and diffs)."""
        out: dict[str, Any] = {
            "format": self.format, "name": self.name, "version": self.version, "files": self.files,
            "contract": self.contract, "preprocessing": self.preprocessing, "golden": self.golden,
            **({"golden_images": self.golden_images} if self.golden_images else {}),
            "accuracy": self.accuracy, "min_runtime": self.min_runtime, "notes": self.notes,
            "created_by": self.created_by,
        }
        out.update(self.extra)
        return json.loads(json.dumps(out))  # a deep copy: callers may mutate it freely


# -- field validators ------------------------------------------------------------------------

def _check_str(data: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise ManifestError(f"{key}: expected {what}, got {value!r}")
    return value


def _check_optional_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ManifestError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _check_object(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise ManifestError(f"{key}: expected an object or null, got {type(value).__name__}")
    return dict(value) if value is not None else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_relpath(value: Any, where: str) -> str:
    """A path inside the version directory: relative, no ``..``, no backslashes, no control characters.

    Manifests come from outside (a copied directory), so a path like
    ``../../etc/passwd`` must never be opened on its say-so; a NUL byte, which the
    OS cannot take in a path at all, is refused here rather than raised by ``open()``.
    """
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: expected a relative file path, got {value!r}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ManifestError(f"{where}: {value!r} holds a control character")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value or value != p.as_posix():
        raise ManifestError(f"{where}: {value!r} must be a normalised path inside the version directory")
    return value


def _check_files(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping) or not value:
        raise ManifestError("files: expected a non-empty object of file name -> {sha256, size}")
    files: dict[str, dict[str, Any]] = {}
    for rel, entry in value.items():
        _check_relpath(rel, "files")
        if not isinstance(entry, Mapping):
            raise ManifestError(f"files.{rel}: expected {{sha256, size}}, got {entry!r}")
        sha, size = entry.get("sha256"), entry.get("size")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise ManifestError(f"files.{rel}.sha256: expected 64 lowercase hex digits, got {sha!r}")
        if not _is_int(size) or size < 0:
            raise ManifestError(f"files.{rel}.size: expected a byte count >= 0, got {size!r}")
        files[rel] = {"sha256": sha, "size": size}
    if MODEL_FILE not in files:
        raise ManifestError(f"files: must list {MODEL_FILE}")
    return files


def _check_tensor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: expected a tensor object, got {value!r}")
    name, dtype, shape = value.get("name"), value.get("dtype"), value.get("shape")
    if not isinstance(name, str):
        raise ManifestError(f"{where}.name: expected a string, got {name!r}")
    if dtype not in _DTYPES:
        raise ManifestError(f"{where}.dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    # -1 is allowed: a dynamic dimension as the runtime's shape_signature reports it.
    if not isinstance(shape, list) or not all(_is_int(d) and d >= -1 for d in shape):
        raise ManifestError(f"{where}.shape: expected a list of dimensions, got {shape!r}")
    quant = value.get("quantization", {"scale": 0.0, "zero_point": 0})
    if not isinstance(quant, Mapping) or not _is_number(quant.get("scale")) or not _is_int(quant.get("zero_point")):
        raise ManifestError(f"{where}.quantization: expected {{scale: number, zero_point: int}}, got {quant!r}")
    return {"name": name, "dtype": dtype, "shape": list(shape),
            "quantization": {"scale": float(quant["scale"]), "zero_point": int(quant["zero_point"])}}


def _check_contract(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ManifestError(f"contract: expected an object with inputs and outputs, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key in ("inputs", "outputs"):
        tensors = value.get(key)
        if not isinstance(tensors, list) or not tensors:
            raise ManifestError(f"contract.{key}: expected a non-empty list of tensors")
        out[key] = [_check_tensor(t, f"contract.{key}[{i}]") for i, t in enumerate(tensors)]
    return out


def _check_preprocessing(value: Any) -> dict[str, Any] | None:
    # Only the shape of the object here; edged.runtime.preprocess checks the values
    # again when it builds the pipeline (and owns the defaults).
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ManifestError(f"preprocessing: expected an object, got {type(value).__name__}")
    if "color" in value and value["color"] not in ("L", "RGB"):
        raise ManifestError(f"preprocessing.color: expected 'L' or 'RGB', got {value['color']!r}")
    for key in ("mean", "std"):
        if key in value:
            v = value[key]
            items = v if isinstance(v, list) else [v]
            if not items or not all(_is_number(x) for x in items):
                raise ManifestError(f"preprocessing.{key}: expected a number or a non-empty list of numbers, got {v!r}")
            if key == "std" and any(x == 0 for x in items):
                raise ManifestError("preprocessing.std: must not contain 0")
    if "invert" in value and not isinstance(value["invert"], bool):
        raise ManifestError(f"preprocessing.invert: expected true or false, got {value['invert']!r}")
    return dict(value)


def _check_golden(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"golden: expected a list, got {type(value).__name__}")
    samples = []
    for i, g in enumerate(value):
        where = f"golden[{i}]"
        if not isinstance(g, Mapping):
            raise ManifestError(f"{where}: expected an object, got {g!r}")
        inp = g.get("input")
        if isinstance(inp, list):
            if not inp:
                raise ManifestError(f"{where}.input: expected a path or a non-empty list of paths")
            for j, p in enumerate(inp):
                _check_relpath(p, f"{where}.input[{j}]")
        else:
            _check_relpath(inp, f"{where}.input")
        outputs = g.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            raise ManifestError(f"{where}.outputs: expected a non-empty list of paths")
        for j, p in enumerate(outputs):
            _check_relpath(p, f"{where}.outputs[{j}]")
        for tol in ("atol", "rtol"):
            if tol in g and (not _is_number(g[tol]) or g[tol] < 0):
                raise ManifestError(f"{where}.{tol}: expected a number >= 0, got {g[tol]!r}")
        samples.append(dict(g))
    return samples


def _check_golden_images(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"golden_images: expected a list, got {type(value).__name__}")
    out = []
    for i, g in enumerate(value):
        where = f"golden_images[{i}]"
        if not isinstance(g, Mapping):
            raise ManifestError(f"{where}: expected an object, got {type(g).__name__}")
        _check_relpath(g.get("file"), f"{where}.file")
        if not _is_int(g.get("top1")) or g["top1"] < 0:
            raise ManifestError(f"{where}.top1: expected a class index >= 0, got {g.get('top1')!r}")
        if not _is_number(g.get("score")):
            raise ManifestError(f"{where}.score: expected a finite number, got {g.get('score')!r}")
        if not _is_number(g.get("atol", 0.0)) or g.get("atol", 0.0) < 0:
            raise ManifestError(f"{where}.atol: expected a number >= 0, got {g.get('atol')!r}")
        if g.get("label") is not None and not isinstance(g["label"], str):
            raise ManifestError(f"{where}.label: expected a string, got {type(g['label']).__name__}")
        out.append(dict(g))
    return out


def _check_accuracy(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ManifestError(f"accuracy: expected an object, got {type(value).__name__}")
    if not isinstance(value.get("metric"), str):
        raise ManifestError(f"accuracy.metric: expected a string, got {value.get('metric')!r}")
    if not _is_number(value.get("value")):
        raise ManifestError(f"accuracy.value: expected a number, got {value.get('value')!r}")
    return dict(value)


def _check_min_runtime(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError(f"min_runtime: expected null or an object of backend -> version string, got {value!r}")
    for backend, version in value.items():
        try:
            Version(version)
        except InvalidVersion:
            raise ManifestError(f"min_runtime.{backend}: {version!r} is not a version number (PEP 440, "
                                f"e.g. \"2.17\" or \"2.17rc1\")") from None
    return dict(value)


# -- files -----------------------------------------------------------------------------------

def load_manifest(version_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``<version_dir>/manifest.json``.

    Raises ``FileNotFoundError`` when there is none (the version is incomplete,
    not broken), :class:`ManifestError` when it is not valid JSON or breaks the
    format.
    """
    text = fsafe.read_bytes(Path(version_dir), MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES)
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from None
    return Manifest.from_dict(data)


def dumps(manifest: Manifest) -> str:
    """The canonical text of a manifest (2-space indent, trailing newline)."""
    return json.dumps(manifest.to_dict(), indent=2) + "\n"


def write_manifest(version_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically and durably; returns its path.

    A temporary file in the same directory is written, fsynced, renamed over the
    target, and the directory is fsynced, so after a crash or power cut readers
    see either no manifest or the whole one, never a torn file; the manifest is
    what marks a version complete.  Raises ``OSError`` from the filesystem (the
    temporary file is removed).
    """
    target = Path(version_dir) / MANIFEST_FILE
    data = dumps(manifest).encode()
    Manifest.from_dict(json.loads(data))  # never write what load_manifest would refuse (ManifestError)
    write_atomic(target, data)
    return target


def file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"sha256": <hex>, "size": <bytes>}`` of one file (streamed; models can be large)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def verify_files(version_dir: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """Compare the files on disk with the manifest; returns problems (empty: all good).

    Each problem names the file: missing, truncated/size mismatch (checked
    before hashing, so a half-copied model is reported as such), sha256
    mismatch, golden sample not on disk, or a path escaping the directory
    through a symlink.  Never raises for a bad file.
    """
    root = Path(version_dir)
    problems: list[str] = []
    for rel, expected in manifest.files.items():
        try:
            # Regular files only, no links, within a time limit (edged.fsafe).
            size, actual = fsafe.hash_file(root, rel)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except ModelError as exc:
            problems.append(exc.message)
            continue
        except OSError as exc:
            problems.append(f"{rel}: unreadable ({exc.strerror})")
            continue
        if size != expected["size"]:
            kind = "truncated" if size < expected["size"] else "size mismatch"
            problems.append(f"{rel}: {kind} ({size} bytes, manifest says {expected['size']})")
            continue
        if actual != expected["sha256"]:
            problems.append(f"{rel}: sha256 mismatch ({actual[:12]}…, manifest says {expected['sha256'][:12]}…)")
    for rel in _golden_paths(manifest.golden):
        if rel not in manifest.files and not (root / rel).is_file():
            problems.append(f"{rel}: golden sample missing")
    return problems


def _golden_paths(golden: Iterable[Mapping[str, Any]]) -> list[str]:
    paths: list[str] = []
    for g in golden:
        inp = g["input"]
        paths.extend(inp if isinstance(inp, list) else [inp])
        paths.extend(g["outputs"])
    return paths


def contract_from_details(input_details: Sequence[Mapping[str, Any]],
                          output_details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest ``contract`` of a loaded interpreter.

    Takes ``get_input_details()`` / ``get_output_details()`` as returned by any
    backend: ``dtype`` is a NumPy type, ``shape`` an array, ``quantization`` a
    ``(scale, zero_point)`` pair.  Same layout as ``LoadedModel.contract()``.
    """
    def one(d: Mapping[str, Any]) -> dict[str, Any]:
        scale, zero_point = d.get("quantization", (0.0, 0))
        return {"name": str(d["name"]), "dtype": np.dtype(d["dtype"]).name,
                "shape": [int(x) for x in d["shape"]],
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}

    return {"inputs": [one(d) for d in input_details], "outputs": [one(d) for d in output_details]}
