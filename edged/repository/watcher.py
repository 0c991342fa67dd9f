"""Watch the repository with watchdog (inotify on Linux; no polling loop of ours).

The observer thread only records that something changed and wakes the main
loop; the loop waits until events have been quiet for ``debounce_s`` before it
rescans, so copying a version in (dozens of events) costs one scan.  Events in
the state directory (``.edged/``) are ignored: the daemon writes there itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from edged.repository.layout import MANIFEST_FILE
from edged.repository.state import STATE_DIR
from edged.seams import Clock

log = logging.getLogger("edged.repository")


class RepositoryWatcher(FileSystemEventHandler):
    def __init__(self, root: Path, clock: Clock, wake: Callable[[], None], debounce_s: float = 0.2) -> None:
        super().__init__()
        self.root = root
        self.clock = clock
        self.wake = wake
        self.debounce_s = debounce_s
        self._lock = threading.Lock()
        self._last_event: float | None = None
        self._observer: Observer | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(self, str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("watching %s for new versions", self.root)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = str(event.src_path)
        if f"/{STATE_DIR}" in path or path.endswith("/current") or "/.current." in path:
            return  # our own writes (state file, current link)
        now = self.clock.monotonic()
        # `edged pack` publishes with one rename of a finished directory: nothing more
        # will follow, so skip the debounce for a directory that arrives with its manifest.
        complete = event.is_directory and event.event_type in ("moved", "created") and \
            os.path.exists(os.path.join(str(getattr(event, "dest_path", "") or path), MANIFEST_FILE))
        with self._lock:
            self._last_event = now - self.debounce_s if complete else now
        self.wake()

    def due(self, now: float) -> float | None:
        """None when nothing is pending; 0 when a scan is due now; else seconds to wait."""
        with self._lock:
            if self._last_event is None:
                return None
            remaining = self._last_event + self.debounce_s - now
            if remaining <= 0:
                self._last_event = None
                return 0.0
            return remaining
