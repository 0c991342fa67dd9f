"""Daemon and model-version states, with no dependencies (like supervisor/states.py)."""

from __future__ import annotations

import enum


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
