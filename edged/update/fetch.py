"""The HTTP side of the TUF client: plain GETs for metadata, resumable GETs for targets.

ngclient does every check (lengths, hashes, signatures, versions, expiry); this
fetcher only moves bytes, through its ``FetcherInterface``:

* **Resume** – while :meth:`ResumableFetcher.resume_into` is active, a target is
  also appended to a ``.part`` file in the staging area.  A later attempt (after
  a dropped connection, or a daemon restart) asks for ``Range: bytes=<have>-``
  and, on ``206``, first replays the bytes it has, so ngclient still hashes the
  whole file.  A server that ignores Range (``200``) restarts the file from zero.
  The request is made *before* replaying anything: once a byte is handed to
  ngclient it cannot be taken back, so how the server answered decides first.
* **Retries** – a transfer cut mid-way is retried up to ``retries`` times with
  exponential backoff (1, 2, 4 … s, at most 60 s); each retry resumes.  Past
  that the ``.part`` stays for the next check.
* **Rate limit** – ``max_rate_kbps`` (kilobits/s): after each chunk the fetcher
  waits until the average rate is back under the cap.
* **Stop** – every wait is on the service's stop event, and each chunk checks
  it, so a daemon that shuts down leaves within one read timeout.

Requests and bytes are counted for ``edged ctl update status`` (the cost of an
idle check is the figure docs/updates.md records).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

import edged

log = logging.getLogger("edged.update")

CHUNK = 64 * 1024
MAX_BACKOFF_S = 60.0


class Stopped(exceptions.DownloadError):
    """The service is shutting down; the partial file is kept for the next start."""


class Paused(Stopped):
    """The strategy's conditions stopped holding mid-transfer; the partial file is kept to resume."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: Seconds between two questions to the strategy's ``hold`` during a transfer.
GATE_EVERY_S = 0.5


class ResumableFetcher(FetcherInterface):
    def __init__(self, *, timeout_s: float, retries: int = 3, max_rate_kbps: float = 0.0,
                 stop: threading.Event | None = None) -> None:
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self.retries = retries
        self.max_rate_kbps = max_rate_kbps
        self.stop = stop or threading.Event()
        self.pool = urllib3.PoolManager(headers={"User-Agent": f"edged/{edged.__version__}"}, retries=False)
        self.requests = 0
        self.bytes = 0
        self._part: Path | None = None
        self._progress: Callable[[int], None] | None = None
        self._gate: Callable[[], str | None] | None = None
        self._gate_at = 0.0
        self._rate_start: float | None = None
        self._rate_bytes = 0

    def close(self) -> None:
        self.pool.clear()

    @contextmanager
    def resume_into(self, part: Path, progress: Callable[[int], None] | None = None,
                    gate: Callable[[], str | None] | None = None) -> Iterator[None]:
        """Make the next target fetch resumable through ``part``.

        ``progress(bytes_so_far)`` is called per chunk; ``gate()`` every
        :data:`GATE_EVERY_S`: a reason it returns pauses the transfer (:class:`Paused`).
        """
        self._part, self._progress, self._gate = part, progress, gate
        try:
            yield
        finally:
            self._part, self._progress, self._gate = None, None, None

    # -- FetcherInterface ------------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        if self._part is not None:
            return self._resumable(url, self._part, self._progress)
        resp = self._get(url, {})
        if resp.status != 200:
            resp.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        return self._chunks(resp)

    # -- internals --------------------------------------------------------------------------------

    def _get(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        if self.stop.is_set():
            raise Stopped("stopping")
        self.requests += 1
        try:
            return self.pool.request("GET", url, headers=headers, preload_content=False, timeout=self.timeout,
                                     redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc

    def _chunks(self, resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            for chunk in resp.stream(CHUNK):
                if self.stop.is_set():
                    raise Stopped("stopping")
                self.bytes += len(chunk)
                self._throttle(len(chunk))
                yield chunk
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"transfer cut: {exc}") from exc
        finally:
            resp.release_conn()

    def _throttle(self, n: int) -> None:
        if self.max_rate_kbps <= 0:
            return
        now = time.monotonic()
        if self._rate_start is None or now - self._rate_start > 10.0:
            self._rate_start, self._rate_bytes = now, 0  # a fresh window: no credit from idle time
        self._rate_bytes += n
        due = self._rate_start + self._rate_bytes * 8 / (self.max_rate_kbps * 1000)
        if due > now and self.stop.wait(due - now):
            raise Stopped("stopping")

    def _resumable(self, url: str, part: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        resp = self._get(url, {"Range": f"bytes={have}-"} if have else {})
        if have and resp.status == 416:  # nothing past what we have: replay it, ngclient judges it
            resp.release_conn()
            yield from _replay(part)
            return
        if resp.status == 200:
            have = 0  # no Range support (or no partial): start over
        elif not (resp.status == 206 and have and _range_start(resp) == have):
            resp.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        elif have:
            log.info("resuming %s at byte %d", url, have)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if have else os.O_TRUNC)
        with os.fdopen(os.open(part, flags, 0o600), "ab" if have else "wb") as out:
            if have:
                yield from _replay(part)
            done, attempt = have, 0
            while True:
                try:
                    for chunk in self._chunks(resp):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done)
                        self._check_gate()
                        yield chunk
                    out.flush()
                    return
                except Stopped:
                    out.flush()
                    raise
                except exceptions.DownloadError as exc:
                    out.flush()
                    if attempt >= self.retries:
                        raise
                    delay = min(MAX_BACKOFF_S, 2.0 ** attempt)
                    attempt += 1
                    log.warning("download of %s cut at byte %d (%s); retry %d/%d in %.0f s", url, done, exc,
                                attempt, self.retries, delay)
                    if self.stop.wait(delay):
                        raise Stopped("stopping") from None
                    resp = self._get(url, {"Range": f"bytes={done}-"})
                    if resp.status != 206 or _range_start(resp) != done:
                        # Bytes already handed to ngclient cannot be taken back: give up this
                        # attempt; the next check starts from the .part with a fresh request.
                        resp.release_conn()
                        raise exceptions.DownloadError(f"{url}: resume refused (HTTP {resp.status})") from None


    def _check_gate(self) -> None:
        now = time.monotonic()
        if self._gate is None or now - self._gate_at < GATE_EVERY_S:
            return
        self._gate_at = now
        reason = self._gate()
        if reason:
            raise Paused(reason)


def _range_start(resp: urllib3.BaseHTTPResponse) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _replay(part: Path) -> Iterator[bytes]:
    with open(part, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk
