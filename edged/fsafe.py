"""Reading files of a version directory as hostile data: regular files only, no links, bounded time.

Anyone who can publish into the repository chooses what a version directory holds.
A ``model.tflite`` or ``labels.txt`` that is a symlink would make edged read (and
serve, or echo as labels) a file outside the repository; a FIFO or a device would
block the reading thread for ever – and the swap thread runs swaps one at a time,
so one bad version would block every later one.  So every file edged reads from a
version directory goes through :func:`read_bytes` or :func:`hash_file`:

* each path component is opened relative to the one before with ``O_NOFOLLOW``: a
  symlink anywhere under the version directory is refused, even one that points
  inside the repository (``edged pack`` copies files; nothing needs a link);
* the file is ``lstat``-ed before it is opened and refused unless it is a regular
  file, so a FIFO or a device is never opened (opening one can block or act);
  ``O_NONBLOCK`` and an ``fstat`` of the opened descriptor (same inode, still
  regular) close the race with a swap of the name in between;
* the open and the read run in a helper thread with a time limit: a read that
  hangs (a stalled network or FUSE filesystem) fails the version with a clear
  error, and the abandoned thread (a daemon thread) cannot hold up the next swap.

Standard library only: the runtime layer and the repository layer both use it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edged.errors import ErrorCode, ModelError

T = TypeVar("T")

#: Longest one file of a version directory may take to open and read (a model file
#: of a few hundred MB from a slow SD card takes well under this).
READ_LIMIT_S = 60.0

_CHUNK = 1 << 20


def _refuse(rel: str, why: str) -> ModelError:
    return ModelError(f"{rel}: {why}", code=ErrorCode.VALIDATION_FAILED)


def open_regular(directory: Path, rel: str) -> int:
    """Open ``directory/rel`` read-only; ``rel`` must name a regular file reached without links.

    Returns a file descriptor the caller closes.  Raises ``FileNotFoundError`` when it
    does not exist, :class:`ModelError` (``VALIDATION_FAILED``) for a symlink, a
    FIFO, a device, a directory, an absolute path or a ``..`` component.
    """
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _refuse(rel, "not a plain relative path inside the version directory")
    # The version directory itself was checked to be inside the repository by its caller.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(rel, f"{part} is a symlink or not a directory") from None
                raise
            os.close(dir_fd)
            dir_fd = nxt
        name = parts[-1]
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(before.st_mode):
            raise _refuse(rel, "is a symlink; files of a version must be regular files (edged pack copies them)")
        if not stat.S_ISREG(before.st_mode):
            raise _refuse(rel, f"is not a regular file ({_kind(before.st_mode)})")
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise _refuse(rel, "was replaced while it was being opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a file"


def run_limited(fn: Callable[[], T], limit_s: float, what: str) -> T:
    """``fn()`` in a helper thread; raises :class:`ModelError` if it takes over ``limit_s``.

    On time-out the thread is abandoned (a daemon thread): a read blocked in the
    kernel cannot be cancelled, but the caller moves on.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    t = threading.Thread(target=run, name="edged-read", daemon=True)
    t.start()
    t.join(limit_s)
    if t.is_alive():
        raise ModelError(f"{what}: no answer from the filesystem within {limit_s:g}s; the version is skipped",
                         code=ErrorCode.VALIDATION_FAILED)
    if error:
        raise error[0]
    return result[0]


def check_regular(directory: Path, rel: str, *, limit_s: float | None = None) -> None:
    """Raise unless ``directory/rel`` is a regular file reached without links (errors as :func:`read_bytes`)."""
    run_limited(lambda: os.close(open_regular(directory, rel)), READ_LIMIT_S if limit_s is None else limit_s,
                f"{directory}/{rel}")


def read_bytes(directory: Path, rel: str, *, max_bytes: int | None = None, limit_s: float | None = None) -> bytes:
    """The content of ``directory/rel`` (see :func:`open_regular`), read within the time limit.

    Raises ``FileNotFoundError``, :class:`ModelError` (refused file, over ``max_bytes``,
    time limit) or ``OSError``.
    """
    def read() -> bytes:
        fd = open_regular(directory, rel)
        try:
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        finally:
            os.close(fd)
        if max_bytes is not None and len(data) > max_bytes:
            raise _refuse(rel, f"over {max_bytes} bytes")
        return data

    return run_limited(read, READ_LIMIT_S if limit_s is None else limit_s, f"{directory}/{rel}")


def hash_file(directory: Path, rel: str, *, limit_s: float | None = None) -> tuple[int, str]:
    """``(size, sha256 hex)`` of ``directory/rel``, streamed (see :func:`read_bytes` for errors)."""
    def digest() -> tuple[int, str]:
        fd = open_regular(directory, rel)
        h = hashlib.sha256()
        size = 0
        try:
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        return size, h.hexdigest()

    return run_limited(digest, READ_LIMIT_S if limit_s is None else limit_s, f"{directory}/{rel}")
