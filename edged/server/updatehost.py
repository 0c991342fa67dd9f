"""The daemon side of the update service's narrow interface (:class:`edged.update.service.UpdateHost`).

The update thread asks what is served and hands back decisions; this adapter
turns them into the repository's own operations (a rollback op on the swap
thread, a persisted bad mark, a rescan) and events.  It is the only code that
lets the updater near the daemon, and it reads the manager's slots the way the
control commands do (copies, never holding a slot across calls).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from typing import Any

from edged.errors import EdgedError
from edged.repository import check, layout
from edged.update.conditions import Situation, default_route_interface
from edged.update.decide import LocalModel
from edged.update.strategy import Health


class DaemonUpdateHost:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def local_models(self) -> list[LocalModel]:
        models = self.daemon.models
        out = []
        for slot in list(models.slots.values()):
            st = models.state.get(slot.name)
            serving = slot.serving.version if slot.serving is not None else None
            failed = dict(st.bad)
            failed.update({v: why for v, (_fp, why) in list(slot.rejected.items())})
            out.append(LocalModel(name=slot.name, serving=serving, probation=slot.probation is not None,
                                  committed=st.committed, present=layout.version_names(models.root / slot.name),
                                  failed=failed))
        return out

    def runtime_ok(self, min_runtime: Any) -> bool:
        backend = self.daemon.backend
        try:
            check.check_min_runtime({"min_runtime": min_runtime} if isinstance(min_runtime, dict) else None,
                                    backend.name, backend.version)
        except EdgedError:
            return False
        return True

    def withdraw(self, model: str, version: str, target: str, reason: str) -> None:
        self.daemon.models.withdraw(model, version, target, reason)

    def mark_bad(self, model: str, version: str, reason: str) -> None:
        self.daemon.models.mark_bad(model, version, reason)

    def installed(self, model: str, version: str) -> None:
        self.daemon.models.rescan_soon()
        self.daemon.wake()

    def emit(self, event: dict[str, Any]) -> None:
        self.daemon.publish(event)

    def situation(self) -> Situation:
        d = self.daemon
        reading = d.power.reading
        try:
            free = shutil.disk_usage(d.models.root).free
        except OSError:
            free = None
        return Situation(allow_updates=bool(d.models.updates_allowed), profile=d.profile,
                         battery_percent=getattr(reading, "battery_percent", None),
                         on_ac=getattr(reading, "on_ac", None), cpu_percent=getattr(reading, "cpu_percent", None),
                         free_bytes=free, interface=default_route_interface(),
                         local_time=datetime.fromtimestamp(d.clock.time()))

    def health(self) -> Health:
        """The serving versions judged by the repository's health book ([health] thresholds)."""
        models = self.daemon.models
        book = models.health
        out = Health()
        for slot in list(models.slots.values()):
            if slot.serving is None:
                continue
            name, version = slot.name, slot.serving.version
            snap = book.snapshot(name, version)
            if snap is None:
                continue
            out.signals[f"{name}/{version}"] = {k: snap.get(k) for k in
                                                ("window", "error_rate", "low_confidence_share", "accuracy",
                                                 "feedback")}
            if snap.get("window", 0) >= book.limits.min_samples:
                out.evidence = True
            out.reasons.extend(f"{name}/{version}: {why}" for why in book.unhealthy_reasons(name, version))
        return out
