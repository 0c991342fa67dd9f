"""Which version of each model serves, and how that changes: swap, probation, rollback.

The :class:`ModelManager` is the server's only view of the repository.

* **Start** – each model is served at its committed version (from the state
  file), else its ``current`` link, else its highest version.  A version left on
  probation by a run that ended without a clean-shutdown record (kill -9, OOM,
  power loss, a crash) uses up a try (the boot counter); at ``probation.tries``
  such ends it is marked bad and the last committed version serves instead, so
  a model that crashes the runtime cannot cause a crash loop.  A clean stop
  (SIGTERM, ``ctl quit``, a reboot) resumes the probation without counting.  A version that fails to load is reported and the next older one
  tried, so one bad file never takes the daemon down.
* **Scan** – on start, on file events (debounced) and on reload, every version
  directory is classified (complete, incomplete, bad, rejected …).  With
  ``activation = "auto"`` the highest new complete version becomes a candidate.
* **Swap** – one background thread runs swaps one at a time: validate the
  candidate in a child process, compare contracts, write the probation record
  (boot counter), build and warm the new interpreters, switch the serving
  reference (requests already queued finish on the old version), point
  ``current`` at it atomically.  The old version is released when its last
  in-flight request drops its reference, or kept for instant rollback
  (``keep_previous``).
* **Probation** – per-request outcomes of the new version are compared with
  the configured thresholds on every tick; crossing one rolls back and marks
  the version bad (persisted), otherwise it is committed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import Config, ModelPolicy
from edged.errors import EdgedError, ErrorCode, ModelError, NotFoundError, RetryableError
from edged.repository import check, health, layout, manifest
from edged.repository.state import Probation, StateStore
from edged.runtime.backends import Backend
from edged.runtime.delegates import EDGETPU_MODEL, DelegateUnavailable
from edged.runtime.model import LITE_MODEL, LoadedModel, LoadSpec
from edged.seams import Clock
from edged.states import VersionState, version_state

log = logging.getLogger("edged.repository")

# Gap between one interpreter build or warm-up and the next during a live swap: about
# one request's time, so no request waits behind two GIL-holding allocate_tensors().
LOAD_PAUSE_S = 0.010

# After a validation that ran out of time waiting for a CPU, the next try of that version.
VALIDATION_RETRY_S = 60.0


def _finite(array: np.ndarray) -> bool:
    # np.logical_and.reduce, not .all(): this runs after every request, and .all() goes
    # through numpy's Python wrapper.
    return array.dtype.kind != "f" or bool(np.logical_and.reduce(np.isfinite(array), axis=None))


@dataclass
class ProbationTracker:
    version: str
    started: float  # clock.monotonic()
    policy: ModelPolicy
    baseline_p95_us: float | None
    requests: int = 0
    errors: int = 0
    #: Requests whose inputs were all finite: only these can show the model's own non-finite outputs.
    judged: int = 0
    nonfinite: int = 0
    latencies: deque[int] = field(default_factory=lambda: deque(maxlen=4096))
    #: The previous version's accuracy (live from feedback, else its manifest's), or None.
    baseline_accuracy: float | None = None

    def record(self, ok: bool, nonfinite: bool | None, invoke_us: int | None) -> None:
        """``nonfinite`` None: the caller's inputs were not finite, so the outputs say nothing of the model."""
        self.requests += 1
        self.errors += 0 if ok else 1
        if nonfinite is not None:
            self.judged += 1
            self.nonfinite += 1 if nonfinite else 0
        if invoke_us is not None:
            self.latencies.append(invoke_us)

    def progress(self, now: float) -> dict[str, Any]:
        """Where this probation stands: what was served toward the commit thresholds, and
        the figures judged against the rollback limits (shown by ``ctl versions``/``status``)."""
        p = self.policy.probation
        n = self.requests
        p95 = float(np.percentile(np.asarray(self.latencies), 95)) if self.latencies else None
        return {
            "requests": n, "requests_needed": p.requests,
            "seconds": round(now - self.started, 1), "seconds_needed": p.seconds, "max_seconds": p.max_seconds,
            "error_rate": round(self.errors / n, 4) if n else None, "max_error_rate": p.max_error_rate,
            "nonfinite_rate": round(self.nonfinite / self.judged, 4) if self.judged else None,
            "max_nonfinite_rate": p.max_nonfinite_rate,
            "p95_invoke_us": None if p95 is None else round(p95), "baseline_p95_us":
                None if self.baseline_p95_us is None else round(self.baseline_p95_us),
            "max_p95_ratio": p.max_p95_ratio,
            "baseline_accuracy": self.baseline_accuracy, "max_accuracy_drop": p.max_accuracy_drop,
        }

    def verdict(self, now: float, accuracy: tuple[float | None, int] = (None, 0)) -> tuple[str, str]:
        """("rollback", why) | ("commit", why) | ("wait", "").

        ``accuracy`` is this version's live accuracy from feedback and the number
        of reports behind it; it judges only past ``min_feedback`` reports and only
        against a known baseline.
        """
        p = self.policy.probation
        live, reports = accuracy
        if live is not None and self.baseline_accuracy is not None and reports >= max(1, p.min_feedback):
            drop = self.baseline_accuracy - live
            if drop > p.max_accuracy_drop:
                return "rollback", (f"live accuracy {live:.1%} over {reports} feedback reports is "
                                    f"{drop * 100:.1f} points under the previous version's "
                                    f"{self.baseline_accuracy:.1%} (limit {p.max_accuracy_drop * 100:.1f})")
        n = self.requests
        elapsed = now - self.started
        timed_out = p.max_seconds > 0 and elapsed >= max(p.seconds, p.max_seconds)
        # Judge rates only on a minimum sample, so one unlucky request cannot roll back;
        # at the time limit on whatever was seen, as it is the last chance to judge them.
        min_samples = max(1, min(p.requests, 20)) if p.requests else 20
        rate_samples = 1 if timed_out else min_samples
        if n >= rate_samples and self.errors / n > p.max_error_rate:
            return "rollback", f"error rate {self.errors}/{n} over {p.max_error_rate:.2%}"
        if self.judged >= rate_samples and self.nonfinite / self.judged > p.max_nonfinite_rate:
            return "rollback", (f"non-finite outputs in {self.nonfinite}/{self.judged} requests with finite inputs "
                                f"over {p.max_nonfinite_rate:.2%}")
        if self.baseline_p95_us and len(self.latencies) >= min_samples:
            p95 = float(np.percentile(np.asarray(self.latencies), 95))
            ratio = p95 / self.baseline_p95_us
            if ratio > p.max_p95_ratio and p95 - self.baseline_p95_us > p.min_p95_delta_ms * 1000:
                return "rollback", (f"p95 invoke latency {p95:.0f}us is {ratio:.1f}x the previous version's "
                                    f"{self.baseline_p95_us:.0f}us (limit {p.max_p95_ratio}x)")
        if elapsed >= p.seconds and n >= p.requests:
            return "commit", f"{n} requests over {elapsed:.0f}s within thresholds"
        if timed_out:
            return "commit", (f"{n} of {p.requests} requests in {elapsed:.0f}s within thresholds; "
                              f"probation ended by time (probation.max_seconds = {p.max_seconds:g})")
        return "wait", ""


@dataclass
class ModelSlot:
    """One model name: what serves it now and what went wrong on the way."""

    name: str
    serving: LoadedModel | None = None
    previous: LoadedModel | None = None  # kept loaded for instant rollback (keep_previous)
    probation: ProbationTracker | None = None
    errors: dict[str, str] = field(default_factory=dict)  # version -> why it was not loaded
    rejected: dict[str, tuple[Any, str]] = field(default_factory=dict)  # version -> (fingerprint, why)
    pending: str | None = None  # version queued for a swap
    # The lite variant enters the process only after a child validated it:
    lite_ok: dict[str, Any] = field(default_factory=dict)  # version -> fingerprint validated
    lite_rejected: dict[str, tuple[Any, str]] = field(default_factory=dict)  # version -> (fingerprint, why)
    deferred: str | None = None  # candidate held back by the power profile


@dataclass
class _Op:
    kind: str  # "swap" | "rollback" | "variant"
    model: str
    version: str | None = None
    force: bool = False
    reason: str = ""
    done: Callable[[dict[str, Any] | None, BaseException | None], None] | None = None
    target: str | None = None  # rollback: go to this version (a registry withdrawal), not the committed one


class ModelManager:
    def __init__(self, config: Config, backend: Backend, *, clock: Clock | None = None,
                 emit: Callable[[dict[str, Any]], None] | None = None,
                 available_memory: Callable[[], int | None] | None = None) -> None:
        self.config = config
        self.available_memory = available_memory or _available_memory
        self.backend = backend
        self.clock = clock or Clock()
        self.root = config.models_path
        self.variant = "full"
        self.num_threads: int | None = None  # power profile override of runtime.num_threads
        self.updates_allowed = True
        self.emit = emit or (lambda event: None)
        self.slots: dict[str, ModelSlot] = {}
        self.state = StateStore(self.root)
        self._ops: queue.Queue[_Op | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards probation trackers (workers record, main loop judges)
        self.rescan_at: float | None = None  # monotonic time when an unsettled version should be looked at again
        self.health = health.HealthBook(config.health)

    # -- loading ---------------------------------------------------------------------------

    def spec_for(self, name: str, version: str, *, variant: str | None = None) -> LoadSpec:
        path = layout.version_dir(self.root, name, version)
        manifest = check.static_checks(path)
        check.check_min_runtime(manifest, self.backend.name, self.backend.version)
        rt = self.config.runtime
        variant = variant or self.variant
        if variant == "lite" and not (path / LITE_MODEL).is_file():
            variant = "full"  # no lighter file: say what really serves
        return LoadSpec(
            name=name, version=version, path=path, backend=self.backend, delegate=rt.delegate,
            workers=self.config.server.workers, num_threads=self.num_threads or rt.num_threads,
            # A profile's num_threads caps the solo interpreter too (none once it is 1).
            solo_threads=min(rt.solo_threads, self.num_threads) if self.num_threads else rt.solo_threads,
            variant=variant,
            edgetpu_device=rt.edgetpu_device, edgetpu_library=rt.edgetpu_library,
            preprocessing=(manifest or {}).get("preprocessing"), labels=layout.read_labels(path), manifest=manifest,
        )

    def load(self, name: str, version: str, *, variant: str | None = None, live: bool = False) -> LoadedModel:
        """Load one version in-process; raises :class:`ModelError` (or ``NotFoundError``).

        ``live``: requests are being served meanwhile, so the interpreter builds and
        warm-ups are spaced :data:`LOAD_PAUSE_S` apart (see :meth:`LoadedModel.load`).
        """
        pause = (lambda: self.clock.sleep(LOAD_PAUSE_S)) if live else None
        # Live: the solo interpreter comes after the switch (_settle), so a swap never
        # holds two versions' solo interpreters at once.
        return LoadedModel.load(self.spec_for(name, version, variant=variant), pause, with_solo=not live)

    def _settle(self, serving: LoadedModel, retired: LoadedModel | None) -> None:
        """After a switch: the version that stopped serving gives up its solo interpreter, then the serving one gets its own.

        The retired version may live on, kept for rollback or held by queued jobs
        (which then run on its pool), so its solo interpreter is dropped here rather
        than left to the garbage collector.  Lone requests run on the pool until the
        new one is built (milliseconds).  Runs on the swap thread.
        """
        if retired is not None and retired is not serving:
            retired.drop_solo()
        serving.add_solo(lambda: self.clock.sleep(LOAD_PAUSE_S))

    def start(self, before_load: Callable[[str], Any] | None = None) -> None:
        """Serve every model in the repository, then start the swap thread.

        ``before_load(name)`` is called before each model loads (the daemon asks
        systemd for more start time there).  Raises :class:`DelegateUnavailable`
        only: an explicitly requested Edge TPU that is missing is a configuration
        problem no older version can fix.
        """
        names = layout.model_names(self.root)
        if not names:
            log.warning("model repository %s has no models; serving nothing until one is published", self.root)
        for name in names:
            if before_load is not None:
                before_load(name)
            self._boot(name)
        self._thread = threading.Thread(target=self._run_ops, name="edged-swapper", daemon=True)
        self._thread.start()

    def _boot(self, name: str) -> None:
        slot = self.slots.setdefault(name, ModelSlot(name))
        st = self.state.get(name)
        model_dir = self.root / name
        versions = layout.version_names(model_dir)
        policy = self.config.repository.policy_for(name)
        preferred: str | None = None
        if st.probation is not None:
            prob = st.probation
            if prob.clean_stop:
                # The last run stopped cleanly (SIGTERM, ctl quit, a reboot): not a try used up.
                # The record is used up now, so a crash of this run counts.
                prob.clean_stop = False
                self.state.update(name, probation=prob)
                preferred = prob.version
                log.info("%s/%s: resuming probation after a clean stop (unclean ends so far: %d, tries %d)",
                         name, prob.version, prob.attempts - 1, policy.probation.tries)
            elif prob.attempts >= policy.probation.tries:
                why = (f"daemon ended uncleanly during probation {prob.attempts} time(s) (no clean-shutdown record: "
                       f"crash, kill -9, OOM or power loss); probation.tries = {policy.probation.tries}")
                log.error("%s/%s: %s; serving the last committed version", name, prob.version, why)
                self.state.mark_bad(name, prob.version, why)
                self.state.update(name, probation=None)
                preferred = st.committed or prob.previous
                self.emit({"event": "rollback", "model": name, "version": preferred, "from": prob.version,
                           "reason": why})
            else:
                prob.attempts += 1
                self.state.update(name, probation=prob)
                preferred = prob.version
                log.warning("%s/%s: resuming probation after an unclean end (%d of %d tries used)", name,
                            prob.version, prob.attempts - 1, policy.probation.tries)
        if preferred is None:
            preferred = st.pinned or st.committed or layout.current_link(model_dir)
        bad = self.state.get(name).bad
        order = sorted((v for v in versions if v not in bad or v == preferred),
                       key=lambda v: (v != preferred, -(layout.version_number(v) or 0)))
        for version in order:
            if version != preferred and not (model_dir / version / layout.MANIFEST_FILE).exists() \
                    and not self._settled(model_dir / version):
                continue  # still being copied in; never load a half-written version
            try:
                slot.serving = self.load(name, version)
            except DelegateUnavailable:
                raise
            except EdgedError as exc:
                slot.errors[version] = exc.message
                log.error("%s/%s not loaded: %s", name, version, exc.message)
                continue
            break
        if slot.serving is None:
            log.error("model %s: no loadable version (%s)", name, ", ".join(versions) or "none")
            return
        m = slot.serving
        log.info("serving %s/%s (%s, delegate %s, %d interpreters%s)", name, m.version, self.backend.describe(),
                 m.delegate, m.pool_size, f" + solo with {m.solo_threads} threads" if m.solo_threads else "")
        st = self.state.get(name)
        if st.probation is not None and st.probation.version == m.version:
            prob = st.probation
            baseline = prob.baseline_p95_us if prob.baseline_variant == m.spec.variant else None
            slot.probation = ProbationTracker(m.version, self.clock.monotonic(), policy, baseline,
                                              baseline_accuracy=self._accuracy_baseline(name, prob.previous))
        elif st.committed != m.version:
            # First sight of this model (or the committed version would not load): adopt what serves.
            self.state.update(name, committed=m.version, probation=None)
        if layout.current_link(model_dir) != m.version:
            layout.set_current(model_dir, m.version)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the swap thread; one still validating after ``timeout`` is abandoned (daemon thread).

        Returns False when it had to be abandoned.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            self._ops.put(None)
            thread.join(timeout=timeout)
            return not thread.is_alive()
        return True

    def record_clean_stop(self) -> None:
        """Write the clean-shutdown record into every probation record (the daemon stops in order).

        The boot counter counts only runs that ended without one (kill -9, OOM, power
        loss, a crash): a version on probation must not be condemned by ``systemctl
        restart`` or a nightly reboot.
        """
        for name in list(self.slots):
            prob = self.state.get(name).probation
            if prob is not None and not prob.clean_stop:
                prob.clean_stop = True
                self.state.update(name, probation=prob)

    # -- lookups -----------------------------------------------------------------------------

    def get(self, name: str | None) -> LoadedModel:
        """The serving version of ``name``, or of the only model when ``name`` is None.

        Raises :class:`NotFoundError` (``UNKNOWN_MODEL``) for unknown names, for a
        missing name when several models exist, and for a model with no loadable version.
        """
        if name is None:
            serving = [s.serving for s in self.slots.values() if s.serving is not None]
            if len(serving) != 1:
                have = ", ".join(sorted(self.slots)) or "none"
                raise NotFoundError(f"request names no model and {len(serving)} are serving ({have}); set 'model'")
            return serving[0]
        slot = self.slots.get(name)
        if slot is None:
            raise self._unknown_model(name)
        if slot.serving is None:
            raise NotFoundError(f"model {name} has no loadable version ({'; '.join(slot.errors.values())})",
                                models=self._serving_names())
        return slot.serving

    def _serving_names(self) -> list[str]:
        return sorted(n for n, s in self.slots.items() if s.serving is not None)

    def _unknown_model(self, name: str) -> NotFoundError:
        return NotFoundError(f"unknown model {name} (models: {', '.join(sorted(self.slots)) or 'none'})",
                             models=sorted(self.slots))

    def slot(self, name: str | None) -> ModelSlot:
        if name is None:
            if len(self.slots) != 1:
                raise NotFoundError(f"{len(self.slots)} models in the repository ({', '.join(sorted(self.slots))}); "
                                    f"name one with --model")
            return next(iter(self.slots.values()))
        layout.check_name("model", name)
        if name not in self.slots:
            raise self._unknown_model(name)
        return self.slots[name]

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for slot in self.slots.values():
            entry: dict[str, Any] = {"model": slot.name, "errors": dict(slot.errors)}
            if slot.serving is not None:
                entry.update(slot.serving.describe())
                entry["probation"] = self._progress(slot)
            else:
                entry["version"] = None
            out.append(entry)
        return out

    def versions(self, name: str | None) -> dict[str, Any]:
        """Every version of a model with its state and, where relevant, the reason."""
        slot = self.slot(name)
        st = self.state.get(slot.name)
        model_dir = self.root / slot.name
        rows = []
        for version in layout.version_names(model_dir):
            path = model_dir / version
            state, reason = version_state(
                serving=slot.serving is not None and version == slot.serving.version,
                on_probation=slot.probation is not None, bad=st.bad.get(version),
                rejected=slot.rejected[version][1] if version in slot.rejected else None,
                previous=slot.previous is not None and version == slot.previous.version,
                complete=lambda path=path: (path / layout.MANIFEST_FILE).exists() or self._settled(path),
                committed=version == st.committed, deferred=slot.deferred == version,
                load_error=slot.errors.get(version))
            row = {"version": version, "state": state.value, "reason": reason,
                   "committed": version == st.committed, "pinned": version == st.pinned}
            if version in slot.lite_rejected:
                row["lite_rejected"] = slot.lite_rejected[version][1]
            if state is VersionState.PROBATION:
                row["probation"] = self._progress(slot)
            rows.append(row)
        return {"model": slot.name, "serving": slot.serving.version if slot.serving else None,
                "committed": st.committed, "pinned": st.pinned, "held": st.held, "versions": rows}

    def _progress(self, slot: ModelSlot) -> dict[str, Any] | None:
        tracker = slot.probation
        if tracker is None:
            return None
        with self._lock:  # workers record into it
            return tracker.progress(self.clock.monotonic())

    # -- scanning ------------------------------------------------------------------------------

    def _settled(self, path: Path) -> bool:
        """A version dir without manifest counts once nothing in it changed for ``settle_s``."""
        newest = 0.0
        try:
            for dirpath, _dirs, files in os.walk(path):
                newest = max(newest, os.stat(dirpath).st_mtime)
                for f in files:
                    newest = max(newest, os.stat(os.path.join(dirpath, f)).st_mtime)
        except FileNotFoundError:
            return False
        age = self.clock.time() - newest
        if age < self.config.repository.settle_s:
            self._rescan_in(self.config.repository.settle_s - age + 0.05)
            return False
        return True

    def _rescan_in(self, seconds: float) -> None:
        """Have the main loop call :meth:`scan` again in ``seconds`` (from any thread)."""
        due = self.clock.monotonic() + seconds
        current = self.rescan_at
        self.rescan_at = due if current is None else min(current, due)

    @staticmethod
    def _fingerprint(path: Path) -> tuple[Any, ...]:
        out = []
        # The variants too: replacing model_lite.tflite must not keep an old verdict on it.
        for name in (layout.MANIFEST_FILE, layout.MODEL_FILE, LITE_MODEL, EDGETPU_MODEL):
            try:
                s = os.stat(path / name)
                out.append((s.st_mtime_ns, s.st_size, s.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def scan(self) -> None:
        """Find new models and candidate versions; queue auto swaps.  Cheap: stats only."""
        self.rescan_at = None
        for name in layout.model_names(self.root):
            slot = self.slots.get(name)
            if slot is None:
                slot = self.slots[name] = ModelSlot(name)
                log.info("new model %s in the repository", name)
            policy = self.config.repository.policy_for(name)
            st = self.state.get(name)
            model_dir = self.root / name
            current = layout.version_number(slot.serving.version) if slot.serving else -1
            floor = current if current is not None else -1
            if st.held is not None and slot.serving is not None:
                floor = max(floor, layout.version_number(st.held) or 0)  # the operator's swap holds
            candidate = None
            for version in reversed(layout.version_names(model_dir)):
                if (layout.version_number(version) or 0) <= floor:
                    break
                if version in st.bad:
                    continue
                path = model_dir / version
                rejected = slot.rejected.get(version)
                if rejected is not None:
                    if rejected[0] == self._fingerprint(path):
                        continue
                    del slot.rejected[version]  # republished: look again
                if not (path / layout.MANIFEST_FILE).exists() and not self._settled(path):
                    continue
                candidate = version
                break
            slot.deferred = None
            if candidate is None or slot.pending == candidate:
                continue
            if slot.serving is not None and (policy.activation != "auto" or st.pinned):
                continue
            if not self.updates_allowed and slot.serving is not None:
                slot.deferred = candidate
                log.info("%s/%s: update deferred by the power profile", name, candidate)
                continue
            slot.pending = candidate
            self._ops.put(_Op("swap", name, candidate, reason="auto"))

    # -- operations (queued, run on the swap thread) ----------------------------------------------

    def request(self, kind: str, model: str | None, version: str | None = None, *, force: bool = False,
                reason: str = "manual", done: Callable[..., None] | None = None) -> None:
        slot = self.slot(model)
        if version is not None:
            layout.version_dir(self.root, slot.name, version)  # validates the name, raises UNKNOWN_VERSION
        self._ops.put(_Op(kind, slot.name, version, force, reason, done))

    def _run_ops(self) -> None:
        while True:
            op = self._ops.get()
            if op is None:
                return
            result: dict[str, Any] | None = None
            error: BaseException | None = None
            try:
                if op.kind == "swap":
                    result = self._swap(op)
                elif op.kind == "rollback":
                    result = self._rollback(op.model, op.reason, expect=op.version, target=op.target)
                elif op.kind == "variant":
                    result = self._switch_variant(op.model)
            except Exception as exc:  # reported to the caller / log; the serving version is untouched
                error = exc
                if not isinstance(exc, EdgedError):
                    log.exception("%s %s failed", op.kind, op.model)
            finally:
                slot = self.slots.get(op.model)
                if slot is not None and op.kind == "swap" and slot.pending == op.version:
                    slot.pending = None
            if error is not None and (op.reason == "auto" or op.kind == "variant"):
                if isinstance(error, check.ValidationStarved):
                    log.warning("%s/%s not swapped yet: %s", op.model, op.version, error.message)
                else:
                    log.error("%s/%s refused: %s", op.model, op.version, getattr(error, "message", error))
            if op.done is not None:
                op.done(result, error)

    def _swap(self, op: _Op) -> dict[str, Any]:
        name, version = op.model, op.version
        assert version is not None
        slot = self.slots[name]
        st = self.state.get(name)
        policy = self.config.repository.policy_for(name)
        path = layout.version_dir(self.root, name, version)
        if version in st.bad and op.reason == "auto":
            raise RetryableError(f"{name}/{version} is marked bad", code=ErrorCode.INVALID_STATE)
        if version in st.bad:
            raise RetryableError(f"{name}/{version} is marked bad ({st.bad[version]}); "
                                 f"run 'edged ctl unmark {version}' first", code=ErrorCode.INVALID_STATE)
        if slot.serving is not None and slot.serving.version == version and slot.serving.spec.variant == self.variant:
            self._hold(name, op.reason)
            return {"model": name, "version": version, "changed": False, **self._held_reply(name)}
        fingerprint = self._fingerprint(path)
        t0 = time.monotonic()
        log.debug("%s/%s: validating (%s)", name, version, op.reason)
        try:
            report = check.validate_in_child(path, runtime=self.backend.name, delegate=self.config.runtime.delegate,
                                             timeout=self.config.repository.validation_timeout_s)
            if slot.serving is not None and not check.same_contract(report["contract"], slot.serving.contract()) \
                    and not op.force:
                raise ModelError(f"{name}/{version} changes the input/output contract "
                                 f"({check.contract_text(slot.serving.contract())} -> "
                                 f"{check.contract_text(report['contract'])}); "
                                 f"swap with --force to accept it", code=ErrorCode.CONTRACT_CHANGED)
        except check.ValidationStarved:
            self._rescan_in(VALIDATION_RETRY_S)  # the version is not at fault: look again later
            raise
        except EdgedError as exc:
            slot.rejected[version] = (fingerprint, exc.message)
            self.emit({"event": "rejected", "model": name, "version": version, "reason": exc.message})
            raise
        validate_s = time.monotonic() - t0
        if report.get("lite"):
            slot.lite_ok[version] = fingerprint
        previous = slot.serving
        # The boot counter goes to disk before the candidate enters this process.  A
        # rollback always returns to the last *committed* version: a version that is
        # superseded while still on probation was never proven good.
        baseline = previous.p95_invoke_us() if previous is not None else None
        baseline_variant = previous.spec.variant if previous is not None else "full"
        # Going back to the committed version needs no probation: it already passed one.
        proven = version == st.committed
        self.state.update(name, probation=None if proven else Probation(version, st.committed, 1, self.clock.time(),
                                                                        baseline, baseline_variant))
        log.debug("%s/%s: validated in %.0f ms; loading", name, version, validate_s * 1000)
        try:
            new = self.load(name, version, live=True)
        except EdgedError as exc:
            self.state.update(name, probation=None)
            slot.rejected[version] = (fingerprint, exc.message)
            raise
        keep = policy.keep_previous and self._can_keep(previous)  # a psutil read: not under the lock
        accuracy_baseline = self._accuracy_baseline(name, st.committed or (previous.version if previous else None))
        with self._lock:
            # Latency is compared like with like: a lite previous says nothing about a full candidate.
            slot.probation = None if proven else ProbationTracker(
                version, self.clock.monotonic(), policy, baseline if baseline_variant == new.spec.variant else None,
                baseline_accuracy=accuracy_baseline)
            slot.serving = new  # from here new requests get the new version; queued ones keep the old
            slot.previous = previous if keep else None
        slot.errors.pop(version, None)
        self._hold(name, op.reason)
        layout.set_current(self.root / name, version)
        event = {"event": "swap", "model": name, "version": version,
                 "previous": previous.version if previous else None, "reason": op.reason,
                 "validate_ms": round(validate_s * 1000), "samples": report.get("samples")}
        log.info("%s: swapped %s -> %s (%s; validated in %.0f ms); %s", name, event["previous"], version, op.reason,
                 validate_s * 1000, "the committed version, no probation" if proven else "on probation")
        self.emit(event)
        self._settle(new, previous)
        return {**event, "changed": True, **self._held_reply(name)}

    def _hold(self, name: str, reason: str) -> None:
        """An operator's swap holds until ``unpin`` or a version newer than any there now arrives.

        Without it, auto-activation would put the newest version back on the next
        scan, undoing ``edged ctl swap v1`` within a second (docs/decisions.md).
        """
        if reason == "manual":
            versions = layout.version_names(self.root / name)
            self.state.update(name, held=versions[-1] if versions else None)
        elif reason == "auto":
            self.state.update(name, held=None)

    def _held_reply(self, name: str) -> dict[str, Any]:
        held = self.state.get(name).held
        if held is None:
            return {}
        return {"held": held, "holds_until": f"'edged ctl unpin' or a version newer than {held} is published"}

    def _rollback(self, name: str, why: str, *, expect: str | None = None,
                  target: str | None = None) -> dict[str, Any]:
        """Roll the serving version back to the last committed one and mark it bad.

        ``expect`` (probation verdicts) is the version judged; if another version
        has superseded it meanwhile, nothing is done.  Raises ``INVALID_STATE``
        when there is no earlier good version.
        """
        slot = self.slots[name]
        st = self.state.get(name)
        bad_version = slot.serving.version if slot.serving else None
        if expect is not None and expect != bad_version:
            log.info("%s: %s was superseded by %s before its rollback ran; nothing to do", name, expect, bad_version)
            return {"model": name, "version": bad_version, "changed": False}
        if target is not None:
            pass  # chosen by the caller (the updater: the newest version below a withdrawn one)
        elif st.probation is not None and st.probation.previous and st.probation.previous != bad_version:
            target = st.probation.previous
        elif st.committed and st.committed != bad_version:
            target = st.committed
        else:
            below = layout.version_number(bad_version or "0") or 0
            older = [v for v in layout.version_names(self.root / name)
                     if v not in st.bad and (layout.version_number(v) or 0) < below]
            target = older[-1] if older else None
        if target is None or target == bad_version:
            raise RetryableError(f"{name}: no earlier good version to roll back to", code=ErrorCode.INVALID_STATE)
        if slot.previous is not None and slot.previous.version == target:
            new = slot.previous
        else:
            # The lite file of a version not validated in this process stays out until
            # the variant op below has validated it in a child.
            lite = self.variant == "lite" and self._lite_known_good(slot, target)
            new = self.load(name, target, variant="lite" if lite else "full", live=True)
        with self._lock:
            slot.probation = None
            old = slot.serving
            slot.serving = new
            slot.previous = None
        if bad_version is not None:
            self.state.mark_bad(name, bad_version, why)
        self.state.update(name, probation=None, committed=target)
        layout.set_current(self.root / name, target)
        log.warning("%s: rolled back %s -> %s: %s", name, bad_version, target, why)
        event = {"event": "rollback", "model": name, "version": target, "from": bad_version, "reason": why}
        self.emit(event)
        self._settle(new, old)
        if new.spec.variant != self.variant:
            self._ops.put(_Op("variant", name, reason="power"))
        return event

    def _switch_variant(self, name: str) -> dict[str, Any] | None:
        slot = self.slots[name]
        cur = slot.serving
        if cur is None or cur.spec.variant == self.variant:
            return None
        if not (cur.spec.path / LITE_MODEL).is_file():
            return None  # nothing to switch to; the full model keeps serving
        if self.variant == "lite" and not self._lite_validated(slot, cur.version, cur.spec.path):
            return None
        new = self.load(name, cur.version, variant=self.variant, live=True)  # same contract: the child checked it
        with self._lock:
            slot.serving = new
            tracker = slot.probation
            if tracker is not None and tracker.version == cur.version:
                # The baseline and the samples so far were measured on the other variant.
                tracker.baseline_p95_us = None
                tracker.latencies.clear()
        event = {"event": "variant", "model": name, "version": cur.version, "variant": self.variant,
                 "file": new.model_file.name}
        log.info("%s/%s: now serving the %s variant (%s)", name, cur.version, self.variant, new.model_file.name)
        self.emit(event)
        self._settle(new, cur)
        return event

    def _can_keep(self, model: LoadedModel | None) -> bool:
        """``keep_previous`` holds the old version only while memory allows.

        Allowed while MemAvailable stays at least 64 MiB plus 4x the model's size
        (its bytes, the interpreters' arenas and headroom for the next swap).
        """
        if model is None:
            return False
        available = self.available_memory()
        need = _KEEP_MARGIN + 4 * model.size
        if available is not None and available < need:
            log.warning("%s/%s: not kept loaded for rollback (keep_previous): %d MiB available, %d MiB needed",
                        model.name, model.version, available >> 20, need >> 20)
            return False
        return True

    def _lite_known_good(self, slot: ModelSlot, version: str) -> bool:
        """A child validated this version's files, lite one included, as they are now."""
        return slot.lite_ok.get(version) == self._fingerprint(layout.version_dir(self.root, slot.name, version))

    def _lite_validated(self, slot: ModelSlot, version: str, path: Path) -> bool:
        """Validate ``version`` (with its lite file) in a child unless already done; False = keep full.

        A lite file that crashes the runtime must crash the child, not the daemon:
        the daemon may restart in the same power profile and would crash again.
        """
        fingerprint = self._fingerprint(path)
        if slot.lite_ok.get(version) == fingerprint:  # validated in a child, as the files are now
            return True
        rejected = slot.lite_rejected.get(version)
        if rejected is not None and rejected[0] == fingerprint:
            return False  # reported when it was found
        try:
            check.validate_in_child(path, runtime=self.backend.name, delegate=self.config.runtime.delegate,
                                    timeout=self.config.repository.validation_timeout_s)
        except check.ValidationStarved as exc:
            log.warning("%s/%s: %s in %.0f s; the full model keeps serving meanwhile", slot.name, version,
                        exc.message, VALIDATION_RETRY_S)
            retry = threading.Timer(VALIDATION_RETRY_S, self._ops.put, args=(_Op("variant", slot.name, reason="retry"),))
            retry.daemon = True
            retry.start()
            return False
        except EdgedError as exc:
            slot.lite_rejected[version] = (fingerprint, exc.message)
            log.error("%s/%s: not switching to %s: %s; the full model keeps serving",
                      slot.name, version, LITE_MODEL, exc.message)
            self.emit({"event": "rejected", "model": slot.name, "version": version, "variant": "lite",
                       "reason": exc.message})
            return False
        slot.lite_ok[version] = fingerprint
        return True

    def set_variant(self, variant: str) -> None:
        """Serve ``variant`` ("full"/"lite") for every model whose version has it."""
        if variant == self.variant:
            return
        self.variant = variant
        for name in self.slots:
            self._ops.put(_Op("variant", name, reason="power"))

    # -- probation ------------------------------------------------------------------------------

    def record(self, model: LoadedModel, ok: bool, outputs: list[np.ndarray] | None, invoke_us: int | None,
               inputs: list[np.ndarray] | None = None, *, request_id: str | None = None,
               latency_us: int | None = None) -> None:
        """Called by workers after each request on ``model``: health signals, and probation if on it.

        Non-finite outputs count against the model only when every input was finite:
        a caller that sends NaN gets NaN back, and that says nothing of the new version.
        """
        nonfinite: bool | None = bool(outputs) and any(not _finite(o) for o in outputs)
        if nonfinite and inputs is not None and not all(_finite(x) for x in inputs):
            nonfinite = None
        scores = model.classifier_output(outputs) if ok and outputs and nonfinite is False else None
        guess = health.top1(*scores) if scores is not None else None
        self.health.record(model.name, model.version, ok=ok, nonfinite=bool(nonfinite),
                           latency_us=latency_us if latency_us is not None else invoke_us,
                           request_id=request_id, top1=guess, labels=model.labels)
        slot = self.slots.get(model.name)
        tracker = slot.probation if slot is not None else None
        if tracker is None or tracker.version != model.version:
            return
        with self._lock:
            tracker.record(ok, nonfinite, invoke_us)

    def _accuracy_baseline(self, name: str, version: str | None) -> float | None:
        """What a new version's live accuracy is held to: ``version``'s own, else its manifest's."""
        if version is None:
            return None
        live, reports = self.health.accuracy(name, version)
        if live is not None and reports >= max(1, self.config.repository.policy_for(name).probation.min_feedback):
            return live
        try:
            acc = manifest.load_manifest(layout.version_dir(self.root, name, version)).accuracy
        except (EdgedError, OSError, ValueError):  # ManifestError is a ValueError; no manifest: no baseline
            return None
        value = acc.get("value") if acc else None
        return float(value) if isinstance(value, (int, float)) and 0.0 <= value <= 1.0 else None

    def feedback(self, request_id: str, *, model: str | None = None, label: str | int | None = None,
                 correct: bool | None = None) -> dict[str, Any]:
        """An application's verdict on an earlier prediction (see :mod:`edged.repository.health`)."""
        if model is not None:
            self.slot(model)  # UNKNOWN_MODEL, listing the names, before "unknown request"
        result = self.health.feedback(model, request_id, label=label, correct=correct)
        live, reports = self.health.accuracy(result["model"], result["version"])
        return {**result, "accuracy": None if live is None else round(live, 4), "feedback": reports}

    def check_probation(self, now: float) -> None:
        """Judge every version on probation (main loop tick)."""
        for slot in self.slots.values():
            tracker = slot.probation
            if tracker is None:
                continue
            accuracy = self.health.accuracy(slot.name, tracker.version)
            with self._lock:
                verdict, why = tracker.verdict(now, accuracy)
            if verdict == "commit":
                slot.probation = None
                before = self.state.get(slot.name).committed  # read before update() changes it in place
                self.state.update(slot.name, committed=tracker.version, probation=None)
                log.info("%s/%s committed: %s", slot.name, tracker.version, why)
                self.emit({"event": "commit", "model": slot.name, "version": tracker.version, "reason": why,
                           "previous_committed": before})
            elif verdict == "rollback":
                slot.probation = None  # judged once; the swap thread does the rest
                self._ops.put(_Op("rollback", slot.name, tracker.version, reason=f"probation failed: {why}"))

    # -- control helpers --------------------------------------------------------------------------

    def pin(self, name: str | None, version: str) -> ModelSlot:
        slot = self.slot(name)
        layout.version_dir(self.root, slot.name, version)
        self.state.update(slot.name, pinned=version)
        return slot

    def restore_pin(self, name: str, version: str | None) -> None:
        """Put back the pin a failed ``pin`` replaced (None: there was none)."""
        self.state.update(name, pinned=version)

    def unpin(self, name: str | None) -> ModelSlot:
        """Let auto-activation manage the model again: clears the pin and an operator's swap hold."""
        slot = self.slot(name)
        self.state.update(slot.name, pinned=None, held=None)
        return slot

    def withdraw(self, name: str, version: str, target: str, why: str) -> None:
        """Roll ``name`` back from ``version`` to ``target`` and mark it bad, on the swap thread (any thread)."""
        self._ops.put(_Op("rollback", name, version, reason=why, target=target))

    def mark_bad(self, name: str, version: str, why: str) -> None:
        """Keep ``version`` from ever being activated (persisted; ``edged ctl unmark`` undoes it)."""
        self.state.mark_bad(name, version, why)

    def rescan_soon(self) -> None:
        """Have the main loop scan the repository at its next turn (any thread)."""
        self._rescan_in(0.0)

    def unmark(self, name: str | None, version: str) -> bool:
        slot = self.slot(name)
        if version not in self.state.get(slot.name).bad:
            layout.version_dir(self.root, slot.name, version)  # UNKNOWN_VERSION naming the versions there
        slot.rejected.pop(version, None)
        return self.state.unmark(slot.name, version)


_KEEP_MARGIN = 64 << 20


def _available_memory() -> int | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        return None
