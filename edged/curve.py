"""CURVE key files for tcp:// endpoints: generate, read and apply them to a socket.

This module sits at the protocol layer: the client, the CLI and the daemon import
it, and it imports only :mod:`zmq` and :mod:`edged.errors`.  The files are
ZeroMQ's certificate format (ZPL), the one pyzmq's ``zmq.auth.create_certificates``
writes, so keys made by other ZeroMQ tools work here and the other way round:

* ``NAME.key`` – the public key, safe to copy anywhere (mode 0644);
* ``NAME.key_secret`` – the public and the secret key (mode 0600, never copied).

Key files are read as hostile input: regular files only (no symlink, FIFO or
device, so a planted FIFO cannot hang a reload), at most 64 KiB, keys checked to
be 40 Z85 characters, and a secret file refused when anyone but its owner may
read it (as ssh refuses a private key).

CURVE protects tcp:// endpoints only.  ipc:// sockets are protected by file
permissions (docs/security.md), so :func:`is_tcp` decides where keys apply.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from edged.errors import EdgedError, ErrorCode

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: Largest key file read (a ZPL certificate is about 300 bytes).
MAX_KEY_FILE_BYTES = 64 * 1024
#: Most public keys read from an allowed-keys directory.
MAX_ALLOWED_KEYS = 10_000
_Z85 = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class KeyFileError(EdgedError):
    """A key file or the allowed-keys directory is missing, unsafe or malformed.

    The message names the path and what to do (``edged keys generate``, ``chmod 600``).
    """

    code = ErrorCode.CONFIG_INVALID


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def _read_regular(path: Path, what: str) -> tuple[bytes, os.stat_result]:
    # O_NOFOLLOW: a symlink is refused, not followed; O_NONBLOCK: opening a FIFO
    # returns at once (and fstat then says it is not a regular file).
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist (create one with `edged keys generate`)") from None
    except OSError as exc:
        hint = " (symlinks are refused)" if os.path.islink(path) else ""
        raise KeyFileError(f"cannot open {what} {path}: {exc.strerror}{hint}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{what} {path} is {st.st_size} bytes; a key file is under {MAX_KEY_FILE_BYTES}")
        return os.read(fd, MAX_KEY_FILE_BYTES + 1), st
    finally:
        os.close(fd)


def _parse(data: bytes, path: Path, what: str) -> dict[str, bytes]:
    """The ``public-key``/``secret-key`` values of a ZPL certificate, checked to be Z85 keys."""
    keys: dict[str, bytes] = {}
    for raw in data.splitlines():
        line = raw.strip()
        name, sep, value = line.partition(b"=")
        name = name.strip()
        if not sep or name not in (b"public-key", b"secret-key"):
            continue
        value = value.strip().strip(b'"')
        if len(value) != 40 or not set(value) <= _Z85:
            raise KeyFileError(f"{what} {path}: {name.decode()} is not a 40-character Z85 CURVE key")
        keys[name.decode()] = value
    if "public-key" not in keys:
        raise KeyFileError(f"{what} {path} holds no public-key (not a ZeroMQ certificate file?)")
    return keys


def read_public_key(path: str | os.PathLike[str], what: str = "public key file") -> bytes:
    """The Z85 public key in ``path`` (a ``.key`` file, or a ``.key_secret`` one).

    Raises :class:`KeyFileError` when the file is missing, not a regular file or malformed.
    """
    p = Path(path)
    data, _ = _read_regular(p, what)
    return _parse(data, p, what)["public-key"]


def read_key_pair(path: str | os.PathLike[str], what: str = "secret key file") -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file.

    Raises :class:`KeyFileError` when the file may be read by anyone but its owner
    (fix: ``chmod 600``), is owned by another user than us or root, holds no
    secret key, or its public key does not belong to its secret key.
    """
    p = Path(path)
    data, st = _read_regular(p, what)
    if st.st_mode & 0o077:
        raise KeyFileError(f"{what} {p} has mode {stat.S_IMODE(st.st_mode):04o}: a secret key must be readable by "
                           f"its owner only (chmod 600 {p})")
    if st.st_uid not in (os.getuid(), 0):
        raise KeyFileError(f"{what} {p} belongs to uid {st.st_uid}, not to this user or root")
    keys = _parse(data, p, what)
    if "secret-key" not in keys:
        raise KeyFileError(f"{what} {p} holds no secret-key (give the .key_secret file, not the .key one)")
    if zmq.curve_public(keys["secret-key"]) != keys["public-key"]:
        raise KeyFileError(f"{what} {p}: its public-key does not belong to its secret-key")
    return keys["public-key"], keys["secret-key"]


def read_allowed_keys(directory: str | os.PathLike[str]) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in ``directory`` (the clients allowed in).

    Other names (``*.key_secret``, READMEs) are ignored.  Raises :class:`KeyFileError`
    when the directory is missing, writable by others (anyone who can write it can let
    themselves in), or holds a ``.key`` entry that is not a well-formed regular file:
    a reload must not silently drop a client the operator meant to allow.
    """
    d = Path(directory)
    try:
        st = os.stat(d)
    except OSError as exc:
        raise KeyFileError(f"allowed client keys directory {d}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"allowed client keys directory {d} is not a directory")
    if st.st_mode & 0o022:
        raise KeyFileError(f"allowed client keys directory {d} has mode {stat.S_IMODE(st.st_mode):04o}: "
                           f"others could add keys (chmod go-w {d})")
    if st.st_uid not in (os.getuid(), 0):
        raise KeyFileError(f"allowed client keys directory {d} belongs to uid {st.st_uid}, not to this user or root")
    names = sorted(n for n in os.listdir(d) if n.endswith(PUBLIC_SUFFIX) and not n.startswith("."))
    if len(names) > MAX_ALLOWED_KEYS:
        raise KeyFileError(f"allowed client keys directory {d} holds {len(names)} keys, limit {MAX_ALLOWED_KEYS}")
    return frozenset(read_public_key(d / n, "client public key file") for n in names)


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to talk to a CURVE endpoint: the server's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def from_files(cls, server_key: str | os.PathLike[str], client_key: str | os.PathLike[str]) -> ClientKeys:
        """``server_key``: the server's ``.key`` file; ``client_key``: this client's ``.key_secret`` file.

        Raises :class:`KeyFileError` (see :func:`read_key_pair`).
        """
        public, secret = read_key_pair(client_key, "client secret key file")
        return cls(read_public_key(server_key, "server public key file"), public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the server; call before ``connect()``."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


@dataclass(frozen=True)
class ServerKeys:
    """The daemon's key pair; applied to every tcp:// socket it binds."""

    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ServerKeys:
        return cls(*read_key_pair(path, "server secret key file"))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server; call before ``bind()``."""
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


@dataclass(frozen=True)
class KeyFiles:
    public_path: Path
    secret_path: Path
    public: bytes


def _write_new(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never overwrite a key (a lost secret cannot be recovered); O_NOFOLLOW:
    # never write through a planted symlink.  fchmod: the umask must not widen or narrow it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _certificate(public: bytes, secret: bytes | None, name: str) -> str:
    kind = "Secret" if secret else "Public"
    lines = [f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by edged keys generate  ****",
             f"#   ZeroMQ CURVE {kind} Certificate ({name})",
             "#   " + ("Keep this file private (mode 0600); never copy it."
                      if secret else "Copy this file to whoever must know this key."),
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate(directory: str | os.PathLike[str], name: str) -> KeyFiles:
    """Write a new key pair ``directory/NAME.key`` (0644) and ``directory/NAME.key_secret`` (0600).

    Raises :class:`KeyFileError` if either file exists (keys are never overwritten)
    or the directory cannot be written.
    """
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name such as 'server' or 'camera-1'")
    d = Path(directory)
    public_path, secret_path = d / f"{name}{PUBLIC_SUFFIX}", d / f"{name}{SECRET_SUFFIX}"
    for p in (public_path, secret_path):
        if os.path.lexists(p):
            raise KeyFileError(f"{p} already exists; keys are never overwritten (remove it first, or pick another name)")
    public, secret = zmq.curve_keypair()
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        _write_new(secret_path, _certificate(public, secret, name), 0o600)
        _write_new(public_path, _certificate(public, None, name), 0o644)
    except OSError as exc:
        raise KeyFileError(f"cannot write keys in {d}: {exc.strerror}") from None
    return KeyFiles(public_path, secret_path, public)
