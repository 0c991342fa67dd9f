"""What a device does with one model, given the registry's signed index: pure logic, no I/O.

Rules (docs/updates.md):

* candidates are the versions in the device's channel, not withdrawn, whose
  rollout covers the device (:mod:`edged.update.rollout`), whose ``min_runtime``
  the device meets, and that never failed here (validation, probation);
* never downgrade: the highest candidate is fetched only when it is newer than
  both the committed and the serving version, unless those are withdrawn;
* a withdrawn version that serves (committed or on probation) is rolled back to
  the newest local version below it that is neither withdrawn nor failed; a
  withdrawn version that is only on disk is marked bad so it never activates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edged.repository.layout import version_number
from edged.update.rollout import covers


@dataclass
class LocalModel:
    """What the device has of one model (from the repository, through the daemon)."""

    name: str
    serving: str | None = None
    probation: bool = False
    committed: str | None = None
    present: list[str] = field(default_factory=list)  # version directories on disk
    failed: dict[str, str] = field(default_factory=dict)  # version -> why (bad, rejected, recorded)


@dataclass
class Decision:
    model: str
    action: str  # "none" | "download" | "withdraw"
    reason: str
    version: str | None = None  # to download; or the withdrawn version
    target: str | None = None  # withdraw: the version to go back to
    mark_bad: dict[str, str] = field(default_factory=dict)  # withdrawn versions on disk, not serving
    available: list[dict[str, Any]] = field(default_factory=list)
    bytes: int = 0  # download: the size of the version's files (set once the client has planned it)


def _num(version: str | None) -> int:
    n = version_number(version) if version else None
    return -1 if n is None else n


def decide(index: dict[str, Any], local: LocalModel, *, device_id: str, channel: str,
           runtime_ok: Callable[[Any], bool] = lambda _min: True) -> Decision:
    """The one action for ``local`` given the registry ``index`` (already verified by TUF)."""
    versions: dict[str, dict[str, Any]] = {v: info for v, info in index.get("versions", {}).items()
                                           if version_number(v) is not None and isinstance(info, dict)}
    withdrawn = {v for v, info in versions.items() if info.get("withdrawn")}
    available = []
    eligible = []
    for v, info in sorted(versions.items(), key=lambda kv: _num(kv[0])):
        rollout = info.get("rollout", 0)
        covered = isinstance(rollout, int) and covers(rollout, device_id, local.name, v)
        row = {"version": v, "channel": info.get("channel"), "rollout": rollout, "covered": covered,
               "withdrawn": v in withdrawn}
        why_not = None
        if v in withdrawn:
            why_not = "withdrawn"
        elif info.get("channel") != channel:
            why_not = f"channel {info.get('channel')}"
        elif not covered:
            why_not = f"rollout {rollout} % does not cover this device"
        elif v in local.failed:
            why_not = f"failed here: {local.failed[v]}"
        elif not runtime_ok(info.get("min_runtime")):
            why_not = f"needs runtime {info.get('min_runtime')}"
        if why_not:
            row["skipped"] = why_not
        else:
            eligible.append(v)
        available.append(row)
    mark_bad = {v: "withdrawn by the registry" for v in withdrawn
                if v in local.present and v != local.serving and v not in local.failed}

    def out(action: str, reason: str, **kw: Any) -> Decision:
        return Decision(local.name, action, reason, mark_bad=mark_bad, available=available, **kw)

    if local.serving in withdrawn:
        below = [v for v in local.present
                 if _num(v) < _num(local.serving) and v not in withdrawn and v not in local.failed]
        if below:
            target = max(below, key=_num)
            return out("withdraw", f"{local.serving} was withdrawn by the registry; back to {target}",
                       version=local.serving, target=target)
        older = [v for v in eligible if _num(v) < _num(local.serving)]
        if older:
            fetch = max(older, key=_num)
            return out("download", f"{local.serving} was withdrawn and no earlier version is on disk; fetching "
                                   f"{fetch} to roll back to", version=fetch)
        return out("none", f"{local.serving} was withdrawn but no earlier version exists to roll back to")
    if not eligible:
        return out("none", "no version for this device (channel, rollout, withdrawn or failed)")
    best = max(eligible, key=_num)
    floor = max([-1] + [_num(v) for v in (local.committed, local.serving) if v and v not in withdrawn])
    if _num(best) <= floor:
        return out("none", f"up to date ({best} is the newest for this device; never downgrade)")
    if best in local.present:
        return out("none", f"{best} is on disk; the repository validates and swaps it")
    return out("download", f"{best} is newer than {local.serving or 'nothing'}", version=best)
