"""One update check: TUF refresh, a decision per model, verified downloads, atomic install.

Everything about trust is python-tuf's ngclient: ``refresh()`` walks new root
versions (key rotation), then timestamp → snapshot → targets, refusing expired,
unsigned, wrongly signed or rolled-back (replayed) metadata; ``download_target``
checks every file's length and hashes.  This module decides and moves files:

* the per-model index ``<model>/index.json`` is itself a target (verified like
  any file) and cached under ``.edged/update/index/``, so an idle check
  downloads only ``timestamp.json`` (and asks for the next root, a 404);
* a version's files are fetched into ``<repository>/.edged/staging/<model>/<version>/``
  (resumable, see :mod:`edged.update.fetch`), and only when every file is
  verified is the directory renamed to ``<repository>/<model>/<version>`` – one
  atomic rename on the same file system, so the watcher never sees half a version;
  from there validation, swap, probation and rollback are the repository's;
* versions that failed here (validation, probation) are recorded in
  ``.edged/update/state.json`` and never fetched again.

The TUF metadata cache is ``.edged/update/tuf/``; its ``root.json`` is the
trusted root after rotations (the configured file only bootstraps it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

import edged
from edged.config import UpdateConfig
from edged.repository import layout
from edged.repository.state import STATE_DIR
from edged.seams import Clock
from edged.update.decide import Decision, LocalModel, decide
from edged.update.fetch import Paused, ResumableFetcher, Stopped
from edged.update.registry import INDEX, index_path, target_path

log = logging.getLogger("edged.update")

MAX_INDEX_BYTES = 1 << 20
_REL_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class Refused(Exception):
    """A check or a download refused, with the reason shown to operators."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def refusal(exc: BaseException) -> Refused:
    """Name what went wrong in words an operator can act on (docs/updates.md, "Refusals")."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return Refused(f"expired metadata: {exc} (the registry's refresh cron is not running?)", "expired")
    if isinstance(exc, exceptions.BadVersionNumberError):
        return Refused(f"replayed or rolled-back metadata: {exc}", "replayed")
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return Refused(f"metadata not signed by a trusted key: {exc}", "untrusted")
    if isinstance(exc, (exceptions.LengthOrHashMismatchError, exceptions.DownloadLengthMismatchError)):
        return Refused(f"downloaded bytes differ from the signed length/hashes: {exc}", "tampered")
    if isinstance(exc, exceptions.DownloadHTTPError):
        return Refused(f"registry answered HTTP {exc.status_code}: {exc}", "unreachable")
    if isinstance(exc, exceptions.DownloadError):
        cause = exc.__cause__ or exc
        return Refused(f"registry unreachable or too slow: {cause}", "unreachable")
    if isinstance(exc, exceptions.RepositoryError):
        return Refused(f"metadata refused: {type(exc).__name__}: {exc}", "metadata")
    if isinstance(exc, OSError):
        return Refused(f"local file error: {exc}", "local")
    return Refused(f"{type(exc).__name__}: {exc}", "error")


@dataclass
class CheckResult:
    started: float  # wall time
    reason: str  # "schedule" | "manual" | …
    ok: bool = True
    refused: str | None = None
    kind: str | None = None
    duration_s: float = 0.0
    requests: int = 0
    bytes: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"at": round(self.started, 3), "reason": self.reason, "ok": self.ok, "refused": self.refused,
                "kind": self.kind, "duration_s": round(self.duration_s, 3), "requests": self.requests,
                "bytes": self.bytes, "decisions": self.decisions, "installed": self.installed}


class UpdateClient:
    """Runs checks for one device; not thread-safe (the service runs one check at a time)."""

    def __init__(self, cfg: UpdateConfig, repo_root: Path, *, device_id: str, fetcher: ResumableFetcher,
                 emit: Callable[[dict[str, Any]], None], clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.root = repo_root
        self.device_id = device_id
        self.fetcher = fetcher
        self.emit = emit
        self.clock = clock or Clock()
        self.state_dir = repo_root / STATE_DIR / "update"
        self.tuf_dir = self.state_dir / "tuf"
        self.index_dir = self.state_dir / "index"
        self.staging = repo_root / STATE_DIR / "staging"
        self.state_path = self.state_dir / "state.json"
        self.failed: dict[str, dict[str, str]] = {}
        self.download: dict[str, Any] | None = None  # the transfer in progress, for status
        self._progress_at = 0.0
        self._load_state()

    # -- persistent record --------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            data = json.loads(self.state_path.read_text())
            failed = data.get("failed", {})
            if isinstance(failed, dict):
                self.failed = {m: {str(v): str(w) for v, w in d.items()} for m, d in failed.items()
                               if isinstance(d, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.error("update state %s unreadable (%s); starting with no failure record", self.state_path, exc)

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".state.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump({"format": 1, "failed": self.failed}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def record_failure(self, model: str, version: str, why: str) -> None:
        """Never fetch ``model``/``version`` again (it failed validation or probation here)."""
        if self.failed.get(model, {}).get(version) == why:
            return
        self.failed.setdefault(model, {})[version] = why
        self._save_state()

    # -- the check -----------------------------------------------------------------------------

    def updater(self) -> Updater:
        """A fresh ngclient Updater (``refresh`` runs once per instance) on the cached trusted root."""
        self.tuf_dir.mkdir(parents=True, exist_ok=True)
        bootstrap: bytes | None = None
        if not (self.tuf_dir / "root.json").exists():
            with open(self.cfg.root, "rb") as fh:  # the root installed with the device
                bootstrap = fh.read()
        base = self.cfg.url.rstrip("/") + "/"
        targets = (self.cfg.targets_url or self.cfg.url).rstrip("/") + "/"
        return Updater(str(self.tuf_dir), base + "metadata/", str(self.staging), targets + "targets/",
                       fetcher=self.fetcher, config=UpdaterConfig(app_user_agent=f"edged/{edged.__version__}"),
                       bootstrap=bootstrap)

    def check(self, models: list[LocalModel], *, reason: str,
              may_download: Callable[[Decision], tuple[bool, str]],
              apply: Callable[[Decision], None], runtime_ok: Callable[[Any], bool],
              hold: Callable[[Decision], str | None] = lambda d: None) -> CheckResult:
        """Refresh metadata and act on every served model; never raises for registry trouble.

        A version found is planned (its signed files and size), then offered to
        ``may_download``; a refusal leaves it ``pending`` with the reason.  While it
        downloads, ``hold`` is asked every half second: a reason pauses it
        (``pending``, the partial file kept for the next try).
        """
        result = CheckResult(self.clock.time(), reason)
        t0, req0, bytes0 = time.monotonic(), self.fetcher.requests, self.fetcher.bytes
        try:
            up = self.updater()
            up.refresh()
            for local in models:
                local.failed = {**self.failed.get(local.name, {}), **local.failed}
                decision = self._decide(up, local, runtime_ok)
                entry = {"model": local.name, "action": decision.action, "reason": decision.reason,
                         "version": decision.version, "target": decision.target, "available": decision.available}
                result.decisions.append(entry)
                if decision.action == "download":
                    assert decision.version is not None
                    infos = self._plan(up, local.name, decision.version)
                    decision.bytes = entry["bytes"] = sum(i.length for i in infos.values())
                    self.emit({"event": "update-available", "model": local.name, "version": decision.version,
                               "bytes": decision.bytes, "reason": decision.reason})
                    allowed, why = may_download(decision)
                    if not allowed:
                        self._defer(entry, decision, why, paused=False)
                        continue
                    try:
                        self._install(local.name, decision.version, infos, up, lambda d=decision: hold(d))
                    except Paused as exc:
                        self._defer(entry, decision, exc.reason, paused=True)
                        continue
                    result.installed.append(f"{local.name}/{decision.version}")
                apply(decision)
        except Stopped:
            result.ok, result.refused, result.kind = False, "stopped before the check finished", "stopped"
        except Exception as exc:  # noqa: BLE001 - every failure is a refusal with a reason, never a crash
            r = refusal(exc)
            if r.kind == "error":
                log.exception("update check failed")
            result.ok, result.refused, result.kind = False, r.reason, r.kind
            log.warning("update refused (%s): %s; the serving models are untouched", r.kind, r.reason)
            self.emit({"event": "update-refused", "kind": r.kind, "reason": r.reason})
        finally:
            self.download = None
            result.duration_s = time.monotonic() - t0
            result.requests = self.fetcher.requests - req0
            result.bytes = self.fetcher.bytes - bytes0
        self.emit({"event": "update-checked", "reason": reason, "ok": result.ok, "kind": result.kind,
                   "requests": result.requests, "bytes": result.bytes, "duration_s": round(result.duration_s, 3),
                   "decisions": {d["model"]: d["action"] for d in result.decisions}})
        return result

    def _defer(self, entry: dict[str, Any], decision: Decision, why: str, *, paused: bool) -> None:
        what = "paused mid-download" if paused else "held back"
        entry.update(action="pending", reason=f"{decision.reason}; {what}: {why}", held_by=why)
        log.info("update %s/%s %s: %s", decision.model, decision.version, what, why)
        self.emit({"event": "update-deferred", "model": decision.model, "version": decision.version,
                   "paused": paused, "reason": why, "bytes": decision.bytes,
                   "bytes_done": self.download["bytes_done"] if self.download else 0})
    def _decide(self, up: Updater, local: LocalModel, runtime_ok: Callable[[Any], bool]) -> Decision:
        info = up.get_targetinfo(index_path(local.name))
        if info is None:
            return Decision(local.name, "none", "not in the registry")
        if info.length > MAX_INDEX_BYTES:
            raise Refused(f"{local.name}/{INDEX} is {info.length} bytes (limit {MAX_INDEX_BYTES})", "metadata")
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = str(self.index_dir / f"{local.name}.json")
        if up.find_cached_target(info, path) is None:
            up.download_target(info, path)
        try:
            index = json.loads(Path(path).read_bytes())
            if not isinstance(index, dict) or index.get("model") != local.name or \
                    not isinstance(index.get("versions"), dict):
                raise ValueError("not an index of this model")
        except ValueError as exc:  # signed but malformed: a publisher bug, refuse it loudly
            raise Refused(f"{local.name}/{INDEX} is malformed: {exc}", "metadata") from None
        return decide(index, local, device_id=self.device_id, channel=self.cfg.channel, runtime_ok=runtime_ok)

    # -- download and install ------------------------------------------------------------------

    def _plan(self, up: Updater, model: str, version: str) -> dict[str, TargetFile]:
        """The signed target of every file of a version (from the index); raises :class:`Refused`."""
        layout.check_name("model", model)
        layout.check_name("version", version)
        index = json.loads((self.index_dir / f"{model}.json").read_bytes())
        files = index["versions"][version].get("files")
        if not isinstance(files, list) or layout.MANIFEST_FILE not in files:
            raise Refused(f"{model}/{version}: the index lists no manifest", "metadata")
        infos: dict[str, TargetFile] = {}
        for rel in files:
            _check_rel(rel)
            info = up.get_targetinfo(target_path(model, version, rel))
            edged_meta = (info.custom or {}).get("edged", {}) if info is not None else {}
            if info is None or edged_meta.get("model") != model or edged_meta.get("version") != version:
                raise Refused(f"{model}/{version}/{rel} is not a signed target of this version", "metadata")
            infos[rel] = info
        total = sum(i.length for i in infos.values())
        if total > self.cfg.max_download_mb * 1e6:
            raise Refused(f"{model}/{version} is {total / 1e6:.1f} MB, over max_download_mb "
                          f"{self.cfg.max_download_mb:g}", "too-large")
        return infos

    def _install(self, model: str, version: str, infos: dict[str, TargetFile], up: Updater,
                 gate: Callable[[], str | None]) -> Path:
        """Fetch every file of a version into staging, verified, then rename it into the repository."""
        dest = self.root / model / version
        if dest.exists():
            return dest
        total = sum(i.length for i in infos.values())
        stage = self.staging / model / version
        stage.mkdir(parents=True, exist_ok=True)
        done = 0
        self.download = {"model": model, "version": version, "bytes_done": 0, "bytes_total": total, "file": None}
        for rel, info in sorted(infos.items(), key=lambda kv: kv[0] == layout.MANIFEST_FILE):
            final = stage / rel
            if up.find_cached_target(info, str(final)) is None:
                self.download["file"] = rel
                part = final.with_name(final.name + ".part")

                def progress(n: int, base: int = done) -> None:
                    self._progress(model, version, base + n, total)

                try:
                    with self.fetcher.resume_into(part, progress, gate):
                        up.download_target(info, str(final))
                except (exceptions.LengthOrHashMismatchError, exceptions.DownloadLengthMismatchError):
                    # These bytes will never verify: start the file over next time.
                    part.unlink(missing_ok=True)
                    final.unlink(missing_ok=True)
                    raise
                part.unlink(missing_ok=True)
            done += info.length
            self._progress(model, version, done, total, force=True)
        for path in stage.rglob("*"):
            if path.is_file():
                _fsync(path)
        os.rename(stage, dest)  # same file system: the version appears whole or not at all
        layout.fsync_dir(dest.parent)
        log.info("update installed %s/%s (%d bytes, verified); the repository validates it next", model, version,
                 total)
        self.emit({"event": "update-installed", "model": model, "version": version, "bytes": total})
        return dest

    def _progress(self, model: str, version: str, done: int, total: int, force: bool = False) -> None:
        if self.download is not None:
            self.download["bytes_done"] = done
        now = time.monotonic()
        if force and done < total:
            return  # a file finished; the next one reports soon
        if force or now - self._progress_at >= 1.0:
            self._progress_at = now
            self.emit({"event": "download-progress", "model": model, "version": version, "bytes_done": done,
                       "bytes_total": total})


def _check_rel(rel: Any) -> None:
    """A relative path from the (signed) index: plain names only, no '..', no hidden parts."""
    if not isinstance(rel, str) or len(rel) > 512 or rel.endswith(".part") or \
            not all(_REL_PART.match(p) for p in rel.split("/")):
        raise Refused(f"unsafe file name {rel!r} in the index", "metadata")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

