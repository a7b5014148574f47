"""The libvirt connection of this compute host and what it can do.

One ``Host`` per agent; libvirt connections are thread-safe, so builds share
it. Capabilities are probed from the driver (never assumed from the URI), the
way nova gates start-paused on the hypervisor type.
"""

from __future__ import annotations

import contextlib
import threading

import libvirt

from spawnflow.exceptions import HostError

# libvirt prints every error to stderr unless a handler is installed; our
# callers turn errors into exceptions with context instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

PAUSED_CAPABLE_TYPES = frozenset({"kvm", "qemu"})


def error_code(exc: libvirt.libvirtError) -> int:
    code: int = exc.get_error_code()
    return code


class Host:
    def __init__(self, uri: str, virt_type: str):
        self.uri = uri
        self.virt_type = virt_type
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._probed: dict[str, bool] = {}

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise HostError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    @property
    def can_start_paused(self) -> bool:
        """Whether a domain can be started paused to wait for VIF events (as nova gates it)."""
        return self.virt_type in PAUSED_CAPABLE_TYPES

    def _supports(self, name: str, probe: str) -> bool:
        if name not in self._probed:
            try:
                getattr(self.conn, probe)()
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
