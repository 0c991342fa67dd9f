"""One daemon per runtime directory and per repository: exclusive ``flock`` locks.

A second ``edged serve`` must not touch what a live one owns – its socket files,
``state.json``, the ``current`` links – even when the live one is stalled (stopped
by SIGSTOP, swapping, or a slow disk) and so cannot answer a probe.  A health probe
cannot tell "stalled" from "dead"; a lock can: the kernel drops an ``flock`` when
its holder dies, however it dies (``kill -9``, OOM, power loss), and never while it
lives.  So :meth:`Daemon.startup` takes these locks before anything else, and a
daemon that cannot get one exits having changed nothing.

Lock files are never removed: unlinking a lock file while another process opens it
would let two processes each lock a different inode of the same name.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from edged.errors import EdgedError, ErrorCode

#: In each directory that holds one of the daemon's ipc:// sockets.
RUNTIME_LOCK = "edged.lock"
#: In the repository's state directory (``<repository>/.edged/``).
REPOSITORY_LOCK = "daemon.lock"


class InstanceLock:
    """Exclusive, non-blocking ``flock`` on a set of lock files, held until :meth:`close`."""

    def __init__(self) -> None:
        self._held: list[tuple[Path, int]] = []

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self._held]

    def acquire(self, path: Path, what: str) -> None:
        """Lock ``path`` (created if missing) for this process, and write our pid in it.

        Raises :class:`EdgedError` (``INVALID_STATE``) naming the holder's pid when
        another process holds it, and (``CONFIG_INVALID``) when the lock file cannot be
        opened or is not a regular file (a symlink is never followed).
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EdgedError(f"cannot open the lock file {path} of {what}: {exc.strerror}",
                             code=ErrorCode.CONFIG_INVALID) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EdgedError(f"lock file {path} of {what} is not a regular file", code=ErrorCode.CONFIG_INVALID)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise EdgedError(f"another edged (pid {holder}) is already serving {what}: {path} is locked; "
                                 f"this one changed nothing and exits", code=ErrorCode.INVALID_STATE) from None
            # Only the holder writes: the pid is for the message above and for operators.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._held.append((path, fd))

    def close(self) -> None:
        """Release every lock (closing the descriptor drops the flock)."""
        while self._held:
            _, fd = self._held.pop()
            try:
                os.close(fd)
            except OSError:
                pass
