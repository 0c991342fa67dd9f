"""Daemon and model-version states, with no dependencies (like supervisor/states.py)."""

from __future__ import annotations

import enum
from collections.abc import Callable


class DaemonState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    DRAINING = "draining"  # shutting down: finishing in-flight requests
    STOPPED = "stopped"


class VersionState(str, enum.Enum):
    SERVING = "serving"
    PREVIOUS = "previous"  # the one before serving; kept loaded if keep_previous
    COMMITTED = "committed"  # passed probation at some point
    PROBATION = "probation"
    BAD = "bad"  # rolled back; never auto-activated until unmarked
    INCOMPLETE = "incomplete"  # no manifest yet / not settled
    REJECTED = "rejected"  # failed validation
    AVAILABLE = "available"  # valid, never served


#: Shown for a version directory without a manifest whose files still change.
INCOMPLETE_REASON = "no manifest yet and files still changing"
#: Shown for a candidate the power profile holds back.
DEFERRED_REASON = "deferred: the power profile does not allow updates now"


def version_state(*, serving: bool, on_probation: bool = False, bad: str | None = None,
                  rejected: str | None = None, previous: bool = False,
                  complete: Callable[[], bool] = lambda: True, committed: bool = False,
                  deferred: bool = False, load_error: str | None = None) -> tuple[VersionState, str]:
    """The state of one version and why, from what is known of it; the first rule that holds wins.

    ``serving``/``on_probation``: it answers requests now; ``bad``/``rejected``: the
    reason it was marked bad or refused by validation; ``previous``: kept loaded for
    rollback; ``complete()``: has a manifest or its files have settled (called only
    when the earlier rules do not decide, as it may walk the directory);
    ``committed``: passed probation; ``deferred``: a candidate the power profile
    holds back; ``load_error``: why it did not load at startup.
    """
    if serving:
        return (VersionState.PROBATION if on_probation else VersionState.SERVING), ""
    if bad is not None:
        return VersionState.BAD, bad
    if rejected is not None:
        return VersionState.REJECTED, rejected
    if previous:
        return VersionState.PREVIOUS, ""
    if not complete():
        return VersionState.INCOMPLETE, INCOMPLETE_REASON
    if committed:
        return VersionState.COMMITTED, ""
    if load_error is not None:
        return VersionState.REJECTED, load_error
    return VersionState.AVAILABLE, DEFERRED_REASON if deferred else ""
