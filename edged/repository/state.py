"""Persisted per-model state: committed version, probation attempts, bad marks, pins.

Kept in ``<repository>/.edged/state.json`` (a dot-directory, so scans ignore it)
and written atomically – temp file, fsync, rename, fsync of the directory – so a
power cut or ``kill -9`` leaves either the old or the new state, never half.
The probation record is written *before* a candidate is loaded in-process: that
is the boot counter that lets a restart notice "we died while trying X".
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edged.repository.layout import write_atomic

log = logging.getLogger("edged.repository")

STATE_DIR = ".edged"
STATE_FILE = "state.json"


@dataclass
class Probation:
    version: str
    previous: str | None
    attempts: int = 1
    started_at: float = 0.0  # wall time, for operators
    #: p95 invoke time of the version it replaced, so a restart mid-probation still
    #: judges latency against it.
    baseline_p95_us: float | None = None
    baseline_variant: str = "full"  # the variant that baseline was measured on
    #: The clean-shutdown record: the run holding this probation stopped in order. The next
    #: boot clears it; a run that ends without writing it (a crash) uses up a try.
    clean_stop: bool = False


@dataclass
class ModelState:
    committed: str | None = None
    pinned: str | None = None
    probation: Probation | None = None
    bad: dict[str, str] = field(default_factory=dict)  # version -> why
    #: An operator's swap holds: auto-activation takes only a version newer than this
    #: one (the newest in the repository at the time of the swap) until ``unpin``.
    held: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelState:
        prob = d.get("probation")
        held = d.get("held")
        return cls(committed=d.get("committed"), pinned=d.get("pinned"),
                   probation=_probation(prob) if isinstance(prob, dict) else None,
                   bad=dict(d.get("bad") or {}), held=held if isinstance(held, str) else None)


class StateStore:
    """Load once, mutate through methods, each of which persists before returning."""

    def __init__(self, root: Path) -> None:
        self.path = root / STATE_DIR / STATE_FILE
        self._lock = threading.Lock()
        self.models: dict[str, ModelState] = {}
        self.found = False
        try:
            raw = json.loads(self.path.read_text())
            self.models = {name: ModelState.from_dict(d) for name, d in raw.get("models", {}).items()}
            self.found = True
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            # A corrupt state file must not stop the daemon: start from the links on disk.
            log.error("state file %s unreadable (%s); starting from the repository's current links", self.path, exc)

    def get(self, model: str) -> ModelState:
        with self._lock:
            return self.models.setdefault(model, ModelState())

    def update(self, model: str, **changes: Any) -> ModelState:
        with self._lock:
            st = self.models.setdefault(model, ModelState())
            for key, value in changes.items():
                setattr(st, key, value)
            self._write()
            return st

    def mark_bad(self, model: str, version: str, why: str) -> None:
        with self._lock:
            self.models.setdefault(model, ModelState()).bad[version] = why
            self._write()

    def unmark(self, model: str, version: str) -> bool:
        with self._lock:
            st = self.models.setdefault(model, ModelState())
            found = st.bad.pop(version, None) is not None
            self._write()
            return found

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": 1, "models": {name: asdict(st) for name, st in self.models.items()}}
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


def _probation(d: dict[str, Any]) -> Probation | None:
    # Ignore keys this version does not know (a state file from a newer edged).
    known = {f.name for f in fields(Probation)}
    try:
        return Probation(**{k: v for k, v in d.items() if k in known})
    except TypeError:  # a required key missing: treat as no probation record
        return None
