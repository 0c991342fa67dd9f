"""What a command may ask of the daemon: the :class:`DaemonAPI` protocol, and the :class:`Request`.

Command modules (``edged.server.commands``) and dispatch see the daemon only
through this protocol, so what each command can touch is visible in its type;
:class:`edged.server.daemon.Daemon` is the one implementation (a unit test
checks it provides every member).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: the server layer's neighbours, never imported at run time from here
    from edged.config import Config
    from edged.repository.manager import ModelManager
    from edged.server.frigate import FrigateEndpoint
    from edged.states import DaemonState
    from edged.update.service import UpdateService


@dataclass
class Request:
    endpoint: str  # "predict" | "control"
    envelope: list[Any]  # routing frames to send back first
    header: dict[str, Any]
    frames: list[Any]  # zmq.Frame objects (zero-copy)
    received: float  # clock.monotonic() when read
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> Any:
        return self.header.get("id")

    @property
    def op(self) -> Any:
        return self.header.get("op")


class DaemonAPI(Protocol):
    """The daemon as commands and dispatch see it."""

    state: DaemonState
    config: Config
    models: ModelManager  # versions, swap requests, pins, feedback (set once startup() ran)
    updater: UpdateService | None  # remote updates; None unless [update] url is set
    frigate: FrigateEndpoint | None  # Frigate's detector socket; None unless [frigate] endpoint is set

    def reply(self, req: Request, header: dict[str, Any], arrays: list[Any] | None = None) -> None:
        """Answer ``req`` now, from the main thread."""

    def post(self, req: Request, header: dict[str, Any], arrays: list[Any] = ...) -> None:
        """Answer ``req`` later, from any thread (the main loop sends it)."""

    def health(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def stats_snapshot(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]:
        """Re-read the config; raises ConfigError (and keeps the old one) when it is invalid."""

    def request_stop(self, reason: str) -> None:
        """Start the drain (``quit``, SIGTERM)."""

    def power_override(self, profile: str | None, for_s: float | None, auto: bool) -> dict[str, Any]:
        """``ctl power``: override the profile, or return to the policy (``auto``); the power status."""

    def run_repository_op(self, req: Request, kind: str, **kw: Any) -> None:
        """Queue a swap/rollback/pin; the reply is posted when it finishes."""

    def submit_predict(self, req: Request) -> None:
        """Admit a predict (power governor, queue); raises Throttled when refused.

        Called on the main loop, which may run a lone request itself
        (``server.inline_max_ms``) instead of handing it to a worker.
        """
