"""Kill the host's libvirtd (SIGKILL) and start it again the way ``tools/start-libvirtd.sh`` does.

Used by ``tests/integration/test_libvirtd_restart.py``. Killing libvirtd does not
kill the QEMU processes of running guests; the restarted daemon re-attaches to
them from its status files under ``/run/libvirt/qemu``. ``Libvirtd.running()``
is the fixture body: whatever the test does, libvirtd answers again afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_SCRIPT = ROOT / "tools" / "start-libvirtd.sh"
PID_FILE = Path("/run/libvirtd.pid")


def _state(pid: int) -> str | None:
    """The process state letter of ``pid`` (``R``, ``S``, ``Z``, ...), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def libvirtd_pid() -> int:
    """The pid of the running libvirtd (from its pid file, checked against /proc)."""
    pid = int(PID_FILE.read_text().strip())
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm != "libvirtd" or _state(pid) in (None, "Z", "X"):
        raise RuntimeError(f"{PID_FILE} names pid {pid} ({comm}), not a live libvirtd")
    return pid


class Libvirtd:
    """The host's libvirtd, as a test kills and restarts it."""

    def __init__(self) -> None:
        self.kills: list[int] = []
        self._restarts: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def kill(self) -> int:
        """SIGKILL libvirtd and wait until it is dead; its pid."""
        pid = libvirtd_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _state(pid) not in (None, "Z", "X"):  # pid 1 here may never reap it
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd {pid} still alive 30 s after SIGKILL")
            time.sleep(0.02)
        self.kills.append(pid)
        return pid

    @staticmethod
    def start() -> None:
        """``tools/start-libvirtd.sh``: start libvirtd unless it answers; fail loudly."""
        proc = subprocess.run(
            ["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=180
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{START_SCRIPT} failed:\n{proc.stdout}{proc.stderr}")

    def kill_and_restart_after(self, delay: float) -> None:
        """Kill libvirtd now; start it again ``delay`` seconds later, in a thread.

        Returns at once, so a build thread that calls this (from a progress
        callback) goes on and meets a dead daemon that comes back later.
        """
        self.kill()

        def restart() -> None:
            time.sleep(delay)
            try:
                self.start()
            except BaseException as exc:
                self._errors.append(exc)

        thread = threading.Thread(target=restart, name="libvirtd-restart", daemon=True)
        thread.start()
        self._restarts.append(thread)

    def settle(self) -> None:
        """Wait for the restarts begun; raise what they raised."""
        for thread in self._restarts:
            thread.join(240)
        if self._errors:
            raise self._errors[0]

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[Libvirtd]:
        """A ``Libvirtd`` for the test; afterwards libvirtd runs again, whatever happened."""
        daemon = cls()
        try:
            yield daemon
        finally:
            try:
                daemon.settle()
            finally:
                cls.start()
