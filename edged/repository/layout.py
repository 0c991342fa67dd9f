"""The on-disk repository layout: ``<root>/<name>/<version>/`` and ``<root>/<name>/current``.

Pure path logic, no loading.  Names are checked so a request or a control call
can never reach outside the repository (no ``..``, no separators, no symlink
that resolves elsewhere).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from edged import fsafe
from edged.errors import ErrorCode, ModelError, NotFoundError, RequestError
from edged.runtime.files import MODEL_FILE

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_RE = re.compile(r"^v?(\d{1,9})$")
CURRENT = "current"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a safe model/version name, else raise ``BAD_REQUEST``."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (CURRENT,) or ".." in name:
        raise RequestError(f"invalid {kind} name {name!r}")
    return name


def version_number(name: str) -> int | None:
    """``v12`` and ``12`` → 12; anything else → None (not a version directory)."""
    m = VERSION_RE.match(name)
    return int(m.group(1)) if m else None


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` resolves (following symlinks) to a place under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def model_names(root: Path) -> list[str]:
    """Model directories under ``root``: valid names, not hidden, inside the repository."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [e.name for e in entries
            if not e.name.startswith(".") and NAME_RE.match(e.name) and e.is_dir() and inside(root, Path(e.path))]


def version_names(model_dir: Path) -> list[str]:
    """Version directories of one model, oldest first (numeric order); hidden/staging dirs skipped."""
    try:
        entries = list(os.scandir(model_dir))
    except FileNotFoundError:
        return []
    found = [(version_number(e.name), e.name) for e in entries
             if not e.name.startswith(".") and e.name != CURRENT and e.is_dir(follow_symlinks=False)]
    return [name for num, name in sorted((n, name) for n, name in found if n is not None)]


def current_link(model_dir: Path) -> str | None:
    """The version ``current`` points at, if it is a symlink to a sibling version dir."""
    link = model_dir / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    name = Path(target).name
    if version_number(name) is None or not (model_dir / name).is_dir() or not inside(model_dir, model_dir / target):
        return None
    return name


def version_dir(root: Path, model: str, version: str) -> Path:
    """The directory of ``model``/``version``; raises ``UNKNOWN_VERSION`` if it does not exist."""
    check_name("model", model)
    check_name("version", version)
    path = root / model / version
    if version_number(version) is None or not path.is_dir() or not inside(root, path):
        versions = version_names(root / model)
        raise NotFoundError(f"model {model} has no version {version} (versions: {', '.join(versions) or 'none'})",
                            code=ErrorCode.UNKNOWN_VERSION, versions=versions)
    return path


#: One label per line; even 100k classes are far below this.
MAX_LABELS_BYTES = 16 << 20


def read_labels(path: Path) -> list[str] | None:
    """The labels of a version, None when it has no ``labels.txt``.

    Raises :class:`ModelError` when the file is not a regular file of the version
    (a symlink, a FIFO...), too large, not UTF-8, or does not read in time (edged.fsafe).
    """
    try:
        raw = fsafe.read_bytes(path, LABELS_FILE, max_bytes=MAX_LABELS_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"{LABELS_FILE}: unreadable ({exc.strerror})", code=ErrorCode.VALIDATION_FAILED) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{LABELS_FILE}: not UTF-8 text", code=ErrorCode.VALIDATION_FAILED) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def set_current(model_dir: Path, version: str) -> None:
    """Point ``current`` at ``version`` atomically: a new symlink renamed over the old one."""
    _replace(model_dir / CURRENT, lambda tmp: os.symlink(version, tmp))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (state file, manifest).

    Readers see the old file or the new one, never a torn one, also after a
    power cut.  Raises ``OSError`` from the filesystem (the temporary file is removed).
    """
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    _replace(path, write)


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    # The temporary name is hidden (scans and watchers skip dot-files) and per process;
    # one left by a process that died is overwritten.  The directory is fsynced after
    # the rename: only then is the new entry itself on disk.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        make(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
