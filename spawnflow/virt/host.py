"""The libvirt connection of this compute host, what it can do, and how it outlives libvirtd.

One ``Host`` per agent; libvirt connections are thread-safe, so builds share
it. Capabilities are probed from the driver (never assumed from the URI), the
way nova gates start-paused on the hypervisor type.

libvirtd may be restarted under a running build (a package upgrade, an
operator, a crash). Running guests survive that, and so must the build:
every libvirt call of a step goes through :meth:`Host.call`, which re-opens
the connection when it was lost and runs the call again, waiting up to
``[libvirt] reconnect_timeout`` for the daemon to answer. That a connection
died is learnt from libvirt itself: its close callback and keepalive, driven
by libvirt's default event loop in a daemon thread (no polling), and the
error of a call that was in flight. Only the wait for the daemon to come back
polls ``libvirt.open``, with a short backoff. Calls are therefore written to
be safe to repeat: each looks at the host first (``spawnflow.virt.domain``,
``secrets``, ``firewall.nwfilter``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import libvirt

from spawnflow.exceptions import AgentStopping, HostError, LibvirtUnreachable

if TYPE_CHECKING:
    from oslo_config import cfg

LOG = logging.getLogger(__name__)

# libvirt prints every error to stderr unless a handler is installed; our
# callers turn errors into exceptions with context instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

PAUSED_CAPABLE_TYPES = frozenset({"kvm", "qemu"})
DEFAULT_RECONNECT_TIMEOUT = 60.0
# A daemon that stops answering (hung, not dead: a dead one closes the socket
# at once) is declared gone after KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) s.
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
# Waiting for libvirtd to come back: first retry of libvirt.open after
# BACKOFF_FIRST s, doubling up to BACKOFF_MAX s, never past the deadline.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0

T = TypeVar("T")

# Errors that say "this connection is gone", whatever the call was.
_GONE_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})
# Errors that mean it when the transport (or its words) raised them; the same
# codes from a driver (QEMU, storage) are real failures of the call.
_TRANSPORT_CODES = frozenset(
    {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_RPC}
)
_TRANSPORT_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
_CLOSED_WORDS = (
    "client socket is closed",
    "connection closed",
    "end of file while reading data",
    "connection reset by peer",
    "broken pipe",
    "failed to connect socket",
    "cannot recv data",
    "cannot write data",
    "keepalive",
)


def error_code(exc: libvirt.libvirtError) -> int:
    code: int = exc.get_error_code()
    return code


def is_disconnect(exc: libvirt.libvirtError) -> bool:
    """Whether ``exc`` says the connection to libvirtd is lost (so: re-open and retry).

    ``VIR_ERR_NO_CONNECT``/``VIR_ERR_INVALID_CONN`` always; a system, internal
    or RPC error when the RPC layer raised it (``Cannot recv data``, ``End of
    file while reading data``, ``client socket is closed``, ``Failed to
    connect socket``) or when its message says the connection closed.
    Anything else is a failure of the call itself and is never retried.
    """
    code = exc.get_error_code()
    if code in _GONE_CODES:
        return True
    if code not in _TRANSPORT_CODES:
        return False
    if exc.get_error_domain() in _TRANSPORT_DOMAINS:
        return True
    message = (exc.get_error_message() or str(exc)).lower()
    return any(words in message for words in _CLOSED_WORDS)


_loop_lock = threading.Lock()
_loop_started = False


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            time.sleep(0.1)  # a broken loop must not spin a CPU


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process).

    Without a running loop libvirt sends no keepalive and never calls a close
    callback. It must be registered before the connection it serves is opened.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _is_alive(conn: libvirt.virConnect) -> bool:
    """``isAlive`` (a local check, no RPC); a closed handle is not alive."""
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


class Host:
    """The agent's libvirt connection: re-opened when lost, calls retried through :meth:`call`."""

    def __init__(
        self,
        uri: str,
        virt_type: str,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ):
        self.uri = uri
        self.virt_type = virt_type
        self.reconnect_timeout = reconnect_timeout
        self._conn: libvirt.virConnect | None = None
        self._generation = 0  # of self._conn: one more on every open
        self._lost = 0  # the newest generation libvirt's close callback reported closed
        self._lock = threading.Lock()
        self._closing = threading.Condition()
        self._closes = 0  # close() calls; a wait for libvirtd ends when this changes
        self._stopping = False  # stop_waiting(): a wait for libvirtd ends as a stop
        self._probed: dict[str, bool] = {}
        # Raises unless the caller may still touch the host (the agent sets its
        # lease check here): run before every attempt of a call.
        self.guard: Callable[[], None] = lambda: None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> Host:
        """The host of ``[libvirt] connection_uri``, ``virt_type`` and ``reconnect_timeout``."""
        return cls(
            conf.libvirt.connection_uri,
            conf.libvirt.virt_type,
            reconnect_timeout=conf.libvirt.reconnect_timeout,
        )

    @property
    def conn(self) -> libvirt.virConnect:
        """The live connection, re-opened (waiting for libvirtd) if it was lost.

        Objects looked up on it die with it when libvirtd restarts: steps use
        :meth:`call`, whose function looks them up again on every attempt.
        """
        return self.call("connecting", lambda conn: conn)

    @property
    def connected(self) -> bool:
        """Whether a connection is open and neither libvirt's close callback nor
        ``isAlive`` says it is lost (no RPC is made to find out)."""
        conn = self._conn
        return conn is not None and self._lost < self._generation and _is_alive(conn)

    def call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """``fn(conn)``, run again on a fresh connection if libvirtd went away meanwhile.

        ``what`` names the operation for the error. ``fn`` must be safe to run
        twice (look first, then act): the first run may have done its work
        before the answer was lost. Errors that are not a lost connection are
        raised as they are. While libvirtd does not answer, the connection is
        re-opened with a short backoff for up to ``reconnect_timeout`` seconds
        from the first failure, then :class:`LibvirtUnreachable` is raised.
        """
        closes = self._closes
        deadline: float | None = None
        delay = BACKOFF_FIRST
        while True:
            self.guard()
            try:
                conn, generation = self._current()
            except libvirt.libvirtError as exc:
                if not is_disconnect(exc):
                    raise HostError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
                failure = exc
            else:
                try:
                    return fn(conn)
                except libvirt.libvirtError as exc:
                    if not (is_disconnect(exc) or not _is_alive(conn)):
                        raise
                    self._forget(generation)
                    failure = exc
            if deadline is None:
                deadline = time.monotonic() + self.reconnect_timeout
                LOG.warning(
                    "%s: lost libvirtd at %s (%s); re-connecting for up to %ss",
                    what,
                    self.uri,
                    failure,
                    self.reconnect_timeout,
                )
                continue  # a restarted daemon may already answer
            delay = self._wait(what, deadline, delay, closes, failure)

    def _wait(
        self, what: str, deadline: float, delay: float, closes: int, failure: Exception
    ) -> float:
        """Sleep ``delay`` (less if the deadline is nearer); the next delay. Raises when
        the deadline has passed or the host was closed meanwhile."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise LibvirtUnreachable(
                f"{what}: libvirtd at {self.uri} is unreachable: no answer for "
                f"{self.reconnect_timeout}s ([libvirt] reconnect_timeout); last error: {failure}"
            ) from failure
        with self._closing:
            ended = self._closing.wait_for(
                lambda: self._closes != closes or self._stopping, timeout=min(delay, left)
            )
            if ended and self._stopping:
                # Not a failure of the step: it stays RUNNING, for the next start.
                raise AgentStopping(f"{what}: agent stopping while waiting for libvirtd")
            if ended:
                raise LibvirtUnreachable(
                    f"{what}: stopped waiting for libvirtd at {self.uri}: the host "
                    f"connection was closed; last error: {failure}"
                ) from failure
        return min(delay * 2, BACKOFF_MAX)

    def _current(self) -> tuple[libvirt.virConnect, int]:
        """The connection and its generation, opened anew if there is none or it died."""
        with self._lock:
            conn = self._conn
            if conn is not None and self.connected:
                return conn, self._generation
            reconnect = conn is not None or self._generation > 0
            self._drop()
            if not self.uri.startswith("test:"):
                start_event_loop()  # before the open: keepalive is set up at open
            conn = libvirt.open(self.uri)
            self._generation += 1
            generation = self._generation
            # The test driver has no keepalive (it cannot lose its connection).
            with contextlib.suppress(libvirt.libvirtError):
                conn.registerCloseCallback(self._on_close, generation)
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            self._conn = conn
        if reconnect:
            LOG.info("re-connected to libvirtd at %s", self.uri)
        return conn, generation

    def _on_close(self, _conn: libvirt.virConnect, reason: int, generation: int) -> None:
        """libvirt's close callback (in the event loop thread): mark that connection lost.

        Takes no lock: libvirt may call it from inside ``close()`` while one is held.
        """
        LOG.debug("libvirt connection %d to %s closed (reason %d)", generation, self.uri, reason)
        self._lost = max(self._lost, generation)

    def _forget(self, generation: int) -> None:
        """Drop the connection of ``generation`` if it is still the current one."""
        with self._lock:
            if self._generation == generation:
                self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def stop_waiting(self) -> None:
        """The agent stops: a call waiting for libvirtd ends at once with AgentStopping."""
        with self._closing:
            self._stopping = True
            self._closing.notify_all()

    def close(self) -> None:
        """Close the connection; calls waiting for libvirtd give up at once."""
        with self._closing:
            self._closes += 1
            self._closing.notify_all()
        with self._lock:
            self._drop()

    @property
    def can_start_paused(self) -> bool:
        """Whether a domain can be started paused to wait for VIF events (as nova gates it)."""
        return self.virt_type in PAUSED_CAPABLE_TYPES

    def _supports(self, name: str, probe: str) -> bool:
        if name not in self._probed:
            try:
                self.call(f"probing {name} support", lambda conn: getattr(conn, probe)())
                self._probed[name] = True
            except libvirt.libvirtError as exc:
                if error_code(exc) != libvirt.VIR_ERR_NO_SUPPORT:
                    raise HostError(f"probing {name} support on {self.uri}: {exc}") from exc
                self._probed[name] = False
        return self._probed[name]

    @property
    def supports_secrets(self) -> bool:
        return self._supports("secrets", "listSecrets")

    @property
    def supports_nwfilter(self) -> bool:
        return self._supports("nwfilter", "listNWFilters")
