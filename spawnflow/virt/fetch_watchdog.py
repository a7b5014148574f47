"""The watchdog of one image fetch: it ends the fetch from another thread.

A fetch blocks in ``recv()`` on a socket (or reads a file) in the build's
thread; whatever must end it comes from elsewhere: the build cancelled or the
agent stopping (``should_stop``), the overall deadline, or no bytes for the
stall timeout. The watchdog polls these every ``POLL`` seconds and, when one
fires, shuts the current socket down, which makes a blocked ``recv()`` return
at once; the reader then raises the watchdog's reason (``check``).

The watchdog must outlive anything that goes wrong around it: an error from
``should_stop`` (it reads the event log, which may be unavailable for a
moment) is not a stop, and does not end the watchdog either, because a fetch
without one could no longer be stopped, cancelled or timed out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from spawnflow.exceptions import ImageFetchInterrupted, ImageUnreachable

LOG = logging.getLogger(__name__)
POLL = 0.2  # how often the watchdog looks: cancel takes effect within this


@dataclass(frozen=True)
class FetchLimits:
    """Time bounds and TLS settings of one fetch (from ``[images]``)."""

    fetch_timeout: float = 3600.0
    stall_timeout: float = 60.0
    retries: int = 3
    ca_file: str | None = None


class Watchdog:
    """Ends a fetch from another thread: stop requested, deadline, or stall."""

    def __init__(
        self, shown: str, limits: FetchLimits, should_stop: Callable[[], bool] | None
    ) -> None:
        self.shown = shown
        self.limits = limits
        self.should_stop = should_stop
        self.deadline = time.monotonic() + limits.fetch_timeout
        self.fired = threading.Event()
        self.error: Exception | None = None
        self._last = time.monotonic()
        self._paused = False
        self._sock: socket.socket | None = None
        self._warned = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spawnflow-fetch-watch", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def progress(self) -> None:
        self._last = time.monotonic()

    def attach(self, sock: socket.socket | None) -> None:
        """The socket to shut down when the watchdog fires (the current connection)."""
        self._sock = sock
        if sock is not None and self.fired.is_set():
            self._shutdown()

    def _shutdown(self) -> None:
        sock = self._sock
        if sock is not None:
            # shutdown, not close: it wakes a recv() blocked in another
            # thread (close would leave it blocked on Linux).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _fire(self, error: Exception) -> None:
        if not self.fired.is_set():
            self.error = error
            self.fired.set()
        self._shutdown()

    def _asked_to_stop(self) -> bool:
        """``should_stop()``, where an error is not a stop but must not end the watchdog
        either: a fetch without its watchdog could not be stopped, cancelled or timed
        out any more (an endless source would run until max_size_gb)."""
        if self.should_stop is None:
            return False
        try:
            return bool(self.should_stop())
        except Exception as exc:
            if not self._warned:
                self._warned = True
                LOG.warning(
                    "fetch of %s: cannot tell whether to stop (%s); asking again", self.shown, exc
                )
            return False

    def _run(self) -> None:
        while not self._done.wait(POLL):
            now = time.monotonic()
            if self._asked_to_stop():
                self._fire(
                    ImageFetchInterrupted(
                        f"fetch of {self.shown} interrupted (build cancelled or agent stopping)"
                    )
                )
            elif now > self.deadline:
                self._fire(
                    ImageUnreachable(
                        f"fetch of {self.shown} took longer than [images] fetch_timeout "
                        f"({self.limits.fetch_timeout:g} s)"
                    )
                )
            elif not self._paused and now - self._last > self.limits.stall_timeout:
                self._fire(
                    ImageUnreachable(
                        f"fetch of {self.shown} stalled: no data for [images] stall_timeout "
                        f"({self.limits.stall_timeout:g} s)"
                    )
                )

    def check(self) -> None:
        """Raise the reason the watchdog fired, if it did."""
        if self.fired.is_set():
            raise self.error  # type: ignore[misc]

    def sleep(self, seconds: float) -> None:
        """Back off for ``seconds`` (not a stall), waking early if the watchdog fires."""
        self._paused = True
        try:
            self.fired.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))
        finally:
            self._paused = False
            self.progress()
        self.check()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()
