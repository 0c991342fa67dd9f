"""One module per wire command: ``NAME``, ``ENDPOINTS``, ``validate()``, ``execute()``.

Each module's docstring is its manual: the request and reply fields and the CLI
form.  ``execute`` returns the reply header (a dict, ``ok`` is added by the
daemon) or None when the reply will be sent later (predict, swap).  A module
that sets ``CHANGES_VERSIONS`` or ``RUNS_MODEL`` is refused with
``SHUTTING_DOWN`` by dispatch while the daemon drains, as is every command on the
predict socket.
"""

from __future__ import annotations

from types import ModuleType

from edged.server.commands import (
    feedback, frigate_detect, frigate_model, frigate_push, health, info, pin, power, predict, quit, reload, rollback,
    stats, status, swap, unmark, unpin, update_check, update_status, versions,
)

REGISTRY: dict[str, ModuleType] = {
    m.NAME: m
    for m in (predict, feedback, info, health, stats, status, reload, quit, versions, swap, rollback, pin, unpin,
              unmark, power, update_status, update_check, frigate_model, frigate_push, frigate_detect)
}
