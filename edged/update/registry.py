"""The publisher side: a TUF repository of static files that devices pull from.

Built with python-tuf's metadata API (``tuf.api.metadata``) and securesystemslib's
``CryptoSigner``, following python-tuf's ``examples/manual_repo``; no signing or
verification code of our own.  Layout of a registry directory (serve it as is)::

    DIR/metadata/1.root.json, 2.root.json …     every root version (devices walk them)
    DIR/metadata/N.targets.json, N.snapshot.json consistent snapshots
    DIR/metadata/timestamp.json                  the only unversioned file devices read
    DIR/metadata/root.json, targets.json, snapshot.json   latest copies, for the publisher
    DIR/targets/<model>/<sha256>.index.json      the model's signed version index
    DIR/targets/<model>/<version>/<sha256>.<file>  the files of each version

Each file of a version is the TUF target ``<model>/<version>/<relpath>`` whose
``custom`` field carries ``{"edged": {model, version, channel, rollout,
min_runtime, withdrawn}}``; ``<model>/index.json`` lists every version with the
same fields and its files, so a device finds versions through ngclient's public
API (``get_targetinfo`` + ``download_target``) only.

Keys live in KEYDIR as ``<role>.pem`` (PKCS#8, mode 0600).  ``root.pem`` and
``targets.pem`` belong offline (the release machine); ``snapshot.pem`` and
``timestamp.pem`` are the online keys ``refresh`` needs (a cron job).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edged.errors import ErrorCode, NotFoundError, RequestError
from edged.repository import layout

ROLES = ("root", "targets", "snapshot", "timestamp")
INDEX = "index.json"
INDEX_FORMAT = 1
CHANNEL_RE = layout.NAME_RE

#: Default lifetimes.  Timestamp and snapshot are short (a device that cannot get
#: fresh ones stops trusting the registry: a freeze attack lasts at most this long)
#: and re-signed by ``refresh`` from cron; root and targets are signed offline.
DEFAULT_EXPIRY_DAYS = {"root": 365.0, "targets": 90.0, "snapshot": 7.0, "timestamp": 1.0}

_PRETTY = JSONSerializer(compact=False)


@dataclass
class Expiry:
    """Lifetimes in days of each role's metadata when it is (re-)signed."""

    root: float = DEFAULT_EXPIRY_DAYS["root"]
    targets: float = DEFAULT_EXPIRY_DAYS["targets"]
    snapshot: float = DEFAULT_EXPIRY_DAYS["snapshot"]
    timestamp: float = DEFAULT_EXPIRY_DAYS["timestamp"]

    def at(self, role: str, now: datetime | None = None) -> datetime:
        now = now or datetime.now(timezone.utc)
        return now.replace(microsecond=0) + timedelta(days=getattr(self, role))


def target_path(model: str, version: str, rel: str) -> str:
    return f"{model}/{version}/{rel}"


def index_path(model: str) -> str:
    return f"{model}/{INDEX}"


class Registry:
    """One registry directory and its keys; every method that changes it signs and writes."""

    def __init__(self, directory: str | os.PathLike[str], keys: str | os.PathLike[str] | None = None,
                 expiry: Expiry | None = None) -> None:
        self.dir = Path(directory)
        self.meta_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.keys_dir = Path(keys) if keys is not None else None
        self.expiry = expiry or Expiry()

    # -- keys ---------------------------------------------------------------------------------

    def _key_file(self, role: str) -> Path:
        if self.keys_dir is None:
            raise RequestError(f"signing {role} metadata needs --keys KEYDIR")
        return self.keys_dir / f"{role}.pem"

    def signer(self, role: str) -> CryptoSigner:
        """The signer for ``role`` from KEYDIR/<role>.pem.

        Raises :class:`RequestError` when the file is missing, unreadable, open to
        other users (keys are 0600), or not a key the current root trusts for ``role``.
        """
        path = self._key_file(role)
        try:
            st = path.stat()
            pem = path.read_bytes()
        except OSError as exc:
            raise RequestError(f"cannot read the {role} key {path}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            raise RequestError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
        try:
            signer = CryptoSigner(load_pem_private_key(pem, None))
        except (ValueError, TypeError) as exc:
            raise RequestError(f"{path} is not a usable private key: {exc}") from None
        root = self._load("root").signed
        if signer.public_key.keyid not in root.roles[role].keyids:
            raise RequestError(f"{path} is not a {role} key of root version {root.version} (rotated away?)")
        return signer

    def _write_key(self, role: str, signer: CryptoSigner) -> None:
        path = self._key_file(role)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.private_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- metadata I/O --------------------------------------------------------------------------

    def _load(self, role: str) -> Metadata[Any]:
        path = self.meta_dir / f"{role}.json"
        try:
            return Metadata.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - StorageError/DeserializationError: say which file
            raise RequestError(f"{self.dir} is not an edged registry (cannot read {path}: {exc})") from None

    def _write(self, role: str, md: Metadata[Any]) -> None:
        """Write ``role``: versioned (consistent snapshot) and the latest copy; timestamp last by the caller."""
        data = md.to_bytes(_PRETTY)
        names = [f"{role}.json"] if role == "timestamp" else [f"{md.signed.version}.{role}.json", f"{role}.json"]
        for name in names:
            _atomic_write(self.meta_dir / name, data)

    def _sign(self, role: str, md: Metadata[Any], signers: list[CryptoSigner] | None = None) -> None:
        md.signatures.clear()
        for signer in signers or [self.signer(role)]:
            md.sign(signer, append=True)

    # -- commands --------------------------------------------------------------------------------

    def init(self) -> dict[str, Any]:
        """Create the four top-level roles, one new ed25519 key each (KEYDIR files 0600).

        Raises :class:`RequestError` when DIR already holds a registry or a key exists.
        """
        if (self.meta_dir / "root.json").exists():
            raise RequestError(f"{self.dir} already holds a registry")
        if self.keys_dir is None:
            raise RequestError("init needs --keys KEYDIR")
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for role in ROLES:
            if self._key_file(role).exists():
                raise RequestError(f"{self._key_file(role)} exists; refusing to overwrite a key")
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        root = Metadata(Root(expires=self.expiry.at("root"), consistent_snapshot=True))
        for role, signer in signers.items():
            root.signed.add_key(signer.public_key, role)
            self._write_key(role, signer)
        targets = Metadata(Targets(expires=self.expiry.at("targets")))
        snapshot = Metadata(Snapshot(expires=self.expiry.at("snapshot")))
        timestamp = Metadata(Timestamp(expires=self.expiry.at("timestamp")))
        for role, md in (("root", root), ("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
            self._sign(role, md, [signers[role]])
            self._write(role, md)
        return {"registry": str(self.dir), "keys": str(self.keys_dir), "root": str(self.meta_dir / "1.root.json"),
                "keyids": {role: s.public_key.keyid for role, s in signers.items()}}

    def publish(self, version_dir: str | os.PathLike[str], *, channel: str, rollout: int,
                runtime: str = "auto") -> dict[str, Any]:
        """Publish a version directory made by ``edged pack`` after ``edged validate`` accepts it.

        Raises :class:`~edged.errors.ModelError` when validation refuses it and
        :class:`RequestError` for a bad channel/rollout or a version already published
        (versions are immutable: publish a new one).
        """
        from edged.repository.check import run_checks
        from edged.repository.manifest import load_manifest

        src = Path(version_dir)
        _check_channel(channel)
        _check_rollout(rollout)
        run_checks(src, runtime)  # the same checks as `edged validate`; raises ModelError
        manifest = load_manifest(src)
        model, version = manifest.name, manifest.version
        targets = self._load("targets")
        index = self._index(targets, model)
        if version in index["versions"]:
            raise RequestError(f"{model}/{version} is already published; versions are immutable, publish a new one")
        files = _version_files(src)
        info = {"channel": channel, "rollout": rollout, "withdrawn": False,
                "min_runtime": manifest.min_runtime, "files": sorted(files)}
        custom = self._custom(model, version, info)
        for rel, path in files.items():
            tpath = target_path(model, version, rel)
            tf = TargetFile.from_file(tpath, str(path))
            tf.unrecognized_fields["custom"] = custom
            targets.signed.targets[tpath] = tf
            self._store_target(tf, path)
        index["versions"][version] = info
        self._put_index(targets, model, index)
        self._commit_targets(targets)
        return {"model": model, "version": version, "channel": channel, "rollout": rollout, "files": sorted(files)}

    def set_rollout(self, model: str, version: str, rollout: int) -> dict[str, Any]:
        """Change a version's rollout percentage (raising it only adds devices)."""
        _check_rollout(rollout)
        return self._update_version(model, version, rollout=rollout)

    def withdraw(self, model: str, version: str) -> dict[str, Any]:
        """Pull a version: devices roll back from it and never fetch it again."""
        return self._update_version(model, version, withdrawn=True)

    def refresh(self, *, force: bool = False) -> dict[str, Any]:
        """Re-sign snapshot and timestamp when half their lifetime is gone (or ``force``).

        Needs only the online keys (snapshot, timestamp): run it from cron well
        within the timestamp lifetime (e.g. hourly for the default one day).
        """
        now = datetime.now(timezone.utc)
        done = []
        snapshot = self._load("snapshot")
        if force or _half_gone(snapshot.signed.expires, self.expiry.snapshot, now):
            snapshot.signed.version += 1
            snapshot.signed.expires = self.expiry.at("snapshot", now)
            self._sign("snapshot", snapshot)
            self._write("snapshot", snapshot)
            done.append("snapshot")
        timestamp = self._load("timestamp")
        if done or force or _half_gone(timestamp.signed.expires, self.expiry.timestamp, now):
            timestamp.signed.version += 1
            timestamp.signed.expires = self.expiry.at("timestamp", now)
            timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
            self._sign("timestamp", timestamp)
            self._write("timestamp", timestamp)
            done.append("timestamp")
        return {"resigned": done, "expires": self._expiries()}

    def rotate(self, role: str) -> dict[str, Any]:
        """Replace ``role``'s key with a new one; a new root version signed by the old root key(s).

        Devices follow without being touched: ngclient walks ``N+1.root.json``,
        which the old root key vouches for.  The old key file is kept as
        ``<role>.pem.<keyid8>.old``; delete it once every device has checked in.
        """
        if role not in ROLES:
            raise RequestError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        root = self._load("root")
        old_root_signer = self.signer("root")
        old = self.signer(role) if role != "root" else old_root_signer
        new = CryptoSigner.generate_ed25519()
        root.signed.revoke_key(old.public_key.keyid, role)
        root.signed.add_key(new.public_key, role)
        root.signed.version += 1
        root.signed.expires = self.expiry.at("root")
        new_root_signer = new if role == "root" else old_root_signer
        # Signed by the threshold of the old root (continuity) and of the new one.
        signers = [old_root_signer] if role != "root" else [old_root_signer, new_root_signer]
        self._sign("root", root, signers)
        path = self._key_file(role)
        os.replace(path, path.with_name(f"{path.name}.{old.public_key.keyid[:8]}.old"))
        self._write_key(role, new)
        self._write("root", root)
        # The rotated role re-signs its metadata with the new key; the rest follows.
        if role == "targets":
            self._commit_targets(self._load("targets"))
        elif role in ("snapshot", "timestamp"):
            self.refresh(force=True)
        return {"role": role, "root_version": root.signed.version, "new_keyid": new.public_key.keyid,
                "old_keyid": old.public_key.keyid}

    def status(self) -> dict[str, Any]:
        """Models, versions, channels, rollout and metadata expiry (reads the latest copies only)."""
        targets = self._load("targets")
        models: dict[str, Any] = {}
        for tpath in sorted(targets.signed.targets):
            model, _, rest = tpath.partition("/")
            if rest == INDEX:
                index = self._index(targets, model)
                models[model] = {v: {k: info[k] for k in ("channel", "rollout", "withdrawn", "min_runtime")}
                                 for v, info in sorted(index["versions"].items(),
                                                       key=lambda kv: layout.version_number(kv[0]) or 0)}
        root = self._load("root").signed
        return {"registry": str(self.dir), "models": models, "expires": self._expiries(),
                "versions": {"root": root.version, "targets": targets.signed.version,
                             "snapshot": self._load("snapshot").signed.version,
                             "timestamp": self._load("timestamp").signed.version}}

    # -- internals -------------------------------------------------------------------------------

    def _expiries(self) -> dict[str, str]:
        return {role: self._load(role).signed.expires.isoformat() for role in ROLES}

    @staticmethod
    def _custom(model: str, version: str, info: dict[str, Any]) -> dict[str, Any]:
        return {"edged": {"model": model, "version": version, **{k: v for k, v in info.items() if k != "files"}}}

    def _index(self, targets: Metadata[Any], model: str) -> dict[str, Any]:
        layout.check_name("model", model)
        tf = targets.signed.targets.get(index_path(model))
        if tf is None:
            return {"format": INDEX_FORMAT, "model": model, "versions": {}}
        path = self._stored_path(tf)
        with open(path, "rb") as fh:
            tf.verify_length_and_hashes(fh)  # the publisher trusts its own tree no more than a device does
        return json.loads(path.read_bytes())

    def _put_index(self, targets: Metadata[Any], model: str, index: dict[str, Any]) -> None:
        data = json.dumps(index, indent=1, sort_keys=True).encode()
        tmp = self.targets_dir / f".{model}.index.tmp"
        _atomic_write(tmp, data)
        tf = TargetFile.from_file(index_path(model), str(tmp))
        tf.unrecognized_fields["custom"] = {"edged": {"model": model, "index": INDEX_FORMAT}}
        targets.signed.targets[index_path(model)] = tf
        self._store_target(tf, tmp)
        tmp.unlink()

    def _update_version(self, model: str, version: str, **changes: Any) -> dict[str, Any]:
        targets = self._load("targets")
        index = self._index(targets, model)
        info = index["versions"].get(version)
        if info is None:
            raise NotFoundError(f"{model}/{version} is not published", code=ErrorCode.UNKNOWN_VERSION)
        info.update(changes)
        custom = self._custom(model, version, info)
        for rel in info["files"]:
            targets.signed.targets[target_path(model, version, rel)].unrecognized_fields["custom"] = custom
        self._put_index(targets, model, index)
        self._commit_targets(targets)
        return {"model": model, "version": version, **{k: info[k] for k in ("channel", "rollout", "withdrawn")}}

    def _stored_path(self, tf: TargetFile) -> Path:
        """Where a target's bytes live: ``targets/<dir>/<sha256>.<name>`` (consistent snapshot naming)."""
        dirname, _, name = tf.path.rpartition("/")
        return self.targets_dir / dirname / f"{tf.hashes['sha256']}.{name}"

    def _store_target(self, tf: TargetFile, src: Path) -> None:
        dest = self._stored_path(tf)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():  # content-addressed: the same bytes are stored once
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)

    def _commit_targets(self, targets: Metadata[Any]) -> None:
        """Sign a new targets version, then snapshot, then timestamp (the order devices read them)."""
        targets.signed.version += 1
        targets.signed.expires = self.expiry.at("targets")
        self._sign("targets", targets)
        self._write("targets", targets)
        snapshot = self._load("snapshot")
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        snapshot.signed.version += 1
        snapshot.signed.expires = self.expiry.at("snapshot")
        self._sign("snapshot", snapshot)
        self._write("snapshot", snapshot)
        timestamp = self._load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.version += 1
        timestamp.signed.expires = self.expiry.at("timestamp")
        self._sign("timestamp", timestamp)
        self._write("timestamp", timestamp)


def _version_files(src: Path) -> dict[str, Path]:
    """Regular files of a version directory by relative path; symlinks and hidden files refused."""
    files: dict[str, Path] = {}
    for dirpath, dirs, names in os.walk(src):
        for name in dirs + names:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise RequestError(f"{path} is a symlink; a published version holds regular files only")
            if name.startswith("."):
                raise RequestError(f"{path} is hidden; remove it before publishing")
        for name in names:
            path = Path(dirpath) / name
            files[path.relative_to(src).as_posix()] = path
    if layout.MANIFEST_FILE not in files or layout.MODEL_FILE not in files:
        raise RequestError(f"{src} lacks {layout.MODEL_FILE} or {layout.MANIFEST_FILE}; make it with `edged pack`")
    return files


def _check_channel(channel: str) -> None:
    if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
        raise RequestError(f"invalid channel {channel!r} (letters, digits, '.', '_', '-')")


def _check_rollout(rollout: int) -> None:
    # An integer: TUF signs canonical JSON, which has no floats.
    if not isinstance(rollout, int) or isinstance(rollout, bool) or not 0 <= rollout <= 100:
        raise RequestError(f"rollout {rollout!r} must be a whole percentage 0-100")


def _half_gone(expires: datetime, lifetime_days: float, now: datetime) -> bool:
    return (expires - now) < timedelta(days=lifetime_days / 2)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

