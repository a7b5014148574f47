"""Telling systemd how the agent is doing: the sd_notify(3) protocol, without libsystemd.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract socket when it starts with ``@``),
so a few lines of Python do it and no C dependency is added. Outside systemd
(no ``$NOTIFY_SOCKET``) every call does nothing.

The watchdog is on only when systemd asks for it, as ``sd_watchdog_enabled``
decides: ``$WATCHDOG_USEC`` is set and ``$WATCHDOG_PID``, if set, is this
process. The three variables are removed from the environment once read, so
that no child (qemu-img, a helper) talks to systemd in the agent's name.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

LOG = logging.getLogger(__name__)

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    """The watchdog period asked of this process, in microseconds (None: no watchdog)."""
    if not usec:
        return None
    try:
        period = int(usec)
        if pid and int(pid) != os.getpid():
            return None  # meant for another process (the one systemd started)
    except ValueError:
        LOG.warning("ignoring WATCHDOG_USEC=%r / WATCHDOG_PID=%r: not numbers", usec, pid)
        return None
    return period if period > 0 else None


class Notifier:
    """Sends state changes to systemd (see the module docstring)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if self.address else None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd's environment asks for, taken out of ``environ``
        (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        address, usec, pid = (env.pop(name, None) for name in _VARIABLES)
        return cls(address, _watchdog_usec(usec, pid))

    @property
    def watchdog_seconds(self) -> float | None:
        """The watchdog timeout systemd set (None: no watchdog)."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1e6

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines; False when there is nowhere to send them or the
        send failed (logged once: systemd's state is not worth stopping the agent)."""
        if not self.address or not fields:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # an abstract socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, target)
        except OSError as exc:
            if not self._failed:
                LOG.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=_one_line(status))

    def status(self, status: str) -> bool:
        return self.send(STATUS=_one_line(status))

    def watchdog(self) -> bool:
        """Tell the watchdog this process is alive (nothing when it is off)."""
        if self.watchdog_usec is None:
            return False
        return self.send(WATCHDOG="1")

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=_one_line(status))


def _one_line(text: str) -> str:
    """A STATUS value: the protocol is line based."""
    return " ".join(text.split())
