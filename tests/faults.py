"""Fault injection for the fault suite (tests/integration/faults): harness only.

Faults are made here, around the real parts, never by flags in ``spawnflow``:

* **durable commit**: an SQLAlchemy ``do_connect`` listener on the Engine class
  has every SQLite connection made by a ``sqlite3.Connection`` subclass whose
  cursors raise ``sqlite3.OperationalError("database is locked")`` (what
  another writer holding SQLite's lock past the busy timeout gives) on the
  write that carries the chosen step's atom going ``RUNNING`` (execute) or
  ``REVERTING`` (revert). Transient: that write fails once. Permanent: from
  it on, every write statement fails (reads still work, as under a real
  lock) until the test calls :meth:`Injector.lift`.
* **libvirt**: ``libvirt.open`` is wrapped, so the agent's ``Host`` gets a
  proxy of the real ``virConnect`` (and of every domain, secret and nwfilter
  it hands out). Transient: the chosen call is made, then its answer (a
  result, or an error such as "no such secret") is lost with the connection
  (a real ``libvirtError`` with the RPC layer's "End of file while reading
  data", what a libvirtd restart gives): the call is
  retried on a new connection and must be safe to repeat. Refused once: the
  daemon answers the call, once, with a failure of its own before it acts
  (``VIR_ERR_OPERATION_FAILED``, as a call refused while a domain's state is
  changing). Permanent: refused that way every time.
* **qemu-img**: a ``qemu-img`` script shadows the real one on ``PATH``; it
  fails the chosen subcommand (exit status 1 and qemu-img's own words on
  stderr), otherwise runs the real one. Transient: "Failed to get "write"
  lock" once; permanent: "No space left on device" every time.
* **netlink**: the VIF modules' ``IPRoute`` is replaced by a subclass whose
  ``link``, ``get_links`` and ``link_lookup`` raise a real ``NetlinkError``
  before the request is sent: ``EBUSY`` once (transient) or ``EPERM`` every
  time (permanent).

A fault is aimed at one call of one step, in one phase (the step's execute or
its revert); the step and phase are learnt from the agent's ``progress``
callback (TaskFlow notifies ``RUNNING``/``REVERTING`` before the step's code
runs). Every call the wrappers see is recorded with where it was made, so a
test can check that the catalogue of fault sites covers what a spawn does.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
import sqlalchemy as sa
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

COMMIT, LIBVIRT, QEMU_IMG, NETLINK = "commit", "libvirt", "qemu-img", "netlink"
TRANSIENT, PERMANENT = "transient", "permanent"
REFUSED_ONCE = "refused-once"  # libvirt only: the daemon answers one call with a failure
EXECUTE, REVERT = "execute", "revert"
# The VIF modules that talk netlink (each imported IPRoute by name).
NETLINK_MODULES = (
    "spawnflow.virt.vif.tap",
    "spawnflow.virt.vif.bridge",
    "spawnflow.virt.vif.netlink",
)
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE")


@dataclass(frozen=True, order=True)
class Site:
    """One call at a fault point, made by ``step`` in ``phase`` (execute or revert)."""

    point: str
    call: str
    step: str
    phase: str

    def __str__(self) -> str:
        return f"{self.point} {self.call} @ {self.step} {self.phase}"


@dataclass(frozen=True)
class Fault:
    site: Site
    mode: str

    @property
    def id(self) -> str:
        s = self.site
        call = s.call.replace(" ", "_").replace(".", "_")
        return f"{s.point}-{call}-{s.step}-{s.phase}-{self.mode}"


# -- errors, as the real parts raise them ---------------------------------------------------


def lost_connection() -> libvirt.libvirtError:
    """What a call in flight gets when libvirtd goes away (the RPC layer's EOF)."""
    message = "End of file while reading data: Input/output error"
    exc = libvirt.libvirtError(message)
    exc.err = (
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_RPC,
        message,
        libvirt.VIR_ERR_ERROR,
        None,
        None,
        None,
        -1,
        -1,
    )
    return exc


def refused(call: str) -> libvirt.libvirtError:
    """A call the daemon answers with a failure of its own (not a lost connection)."""
    message = f"operation failed: {call} refused (fault injected by the test harness)"
    exc = libvirt.libvirtError(message)
    exc.err = (
        libvirt.VIR_ERR_OPERATION_FAILED,
        libvirt.VIR_FROM_QEMU,
        message,
        libvirt.VIR_ERR_ERROR,
        None,
        None,
        None,
        0,
        0,
    )
    return exc


def netlink_error(mode: str) -> NetlinkError:
    return NetlinkError(errno.EBUSY if mode == TRANSIENT else errno.EPERM)


def database_locked() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database is locked")


# -- the injector ---------------------------------------------------------------------------


class Injector:
    """Wraps the real parts of this process; fires the armed fault where it is aimed."""

    def __init__(self, workdir: Path):
        self.bin = workdir / "fault-bin"
        self.fault: Fault | None = None
        self.fired: list[str] = []  # what was raised, in order
        self.calls: set[Site] = set()  # every call seen inside a step
        self._step: str | None = None
        self._phase: str | None = None
        self._db_down = False  # a permanent commit fault fired, not lifted yet
        self._lock = threading.Lock()

    # where the agent is: its progress callback -------------------------------------------

    def progress(self, _build_id: str, step: str, state: str, _elapsed: float) -> None:
        phase = {"RUNNING": EXECUTE, "REVERTING": REVERT}.get(state)
        self._step, self._phase = (step, phase) if phase else (None, None)
        where = f"{self._step} {self._phase}" if phase else ""
        (self.bin / "where").write_text(where)

    # arming ------------------------------------------------------------------------------

    def arm(self, fault: Fault) -> None:
        self.fault = fault
        site = fault.site
        if site.point == QEMU_IMG:
            (self.bin / "rule").write_text(f"{site.step} {site.phase} {site.call} {fault.mode}\n")

    def disarm(self) -> None:
        """Nothing fires any more (the build is over; the test checks the host)."""
        self.fault = None
        self._step = self._phase = None
        for name in ("rule", "where"):
            (self.bin / name).unlink(missing_ok=True)
        self.lift()

    def lift(self) -> None:
        """End a permanent commit fault: the log takes writes again (for good)."""
        if self.fault is not None and self.fault.site.point == COMMIT:
            self.fault = None
        self._db_down = False

    def _aimed(self, point: str, call: str) -> Fault | None:
        """The armed fault if it is aimed at this call, here and now."""
        fault = self.fault
        if fault is None or self._step is None:
            return None
        site = Site(point, call, self._step, self._phase or "")
        return fault if fault.site == site else None

    def _seen(self, point: str, call: str) -> None:
        if self._step is not None:
            self.calls.add(Site(point, call, self._step, self._phase or ""))

    def _fire(self, fault: Fault, what: str) -> bool:
        """Whether to raise now: always for a permanent fault, once for the others."""
        with self._lock:
            if fault.mode != PERMANENT and self.fired:
                return False
            self.fired.append(what)
            return True

    # libvirt -----------------------------------------------------------------------------

    def libvirt_call(self, call: str, run: Callable[[], Any]) -> Any:
        self._seen(LIBVIRT, call)
        fault = self._aimed(LIBVIRT, call)
        if fault is None:
            return run()
        if fault.mode != TRANSIENT:  # refused before it acts
            if self._fire(fault, call):
                raise refused(call)
            return run()
        try:
            result = run()  # done; only the answer (a result or an error) is lost
        except libvirt.libvirtError:
            if self._fire(fault, call):
                raise lost_connection() from None
            raise
        if self._fire(fault, call):
            raise lost_connection()
        return result

    # netlink -----------------------------------------------------------------------------

    def netlink_call(self, call: str) -> None:
        self._seen(NETLINK, call)
        fault = self._aimed(NETLINK, call)
        if fault is not None and self._fire(fault, call):
            raise netlink_error(fault.mode)

    # durable commit ----------------------------------------------------------------------

    def sql(self, statement: str, rows: Iterable[Any]) -> None:
        """Called with every statement a SQLite cursor of the agent runs."""
        words = statement.lstrip().upper()
        writes = words.startswith(_WRITES)
        if self._db_down and writes:
            self.fired.append("write while the log is down")
            raise database_locked()
        fault = self.fault
        if (
            fault is None
            or fault.site.point != COMMIT
            or not words.startswith("INSERT INTO EVENTS")
        ):
            return
        to_state = "RUNNING" if fault.site.phase == EXECUTE else "REVERTING"
        for row in rows:
            if (
                isinstance(row, dict)
                and row.get("kind") == "atom"
                and row.get("name") == fault.site.step
                and row.get("to_state") == to_state
                and self._fire(fault, f"commit of {fault.site.step} {to_state}")
            ):
                if fault.mode == PERMANENT:
                    self._db_down = True
                raise database_locked()

    def commits_seen(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if isinstance(row, dict) and row.get("kind") == "atom":
                state = row.get("to_state")
                phase = {"RUNNING": EXECUTE, "REVERTING": REVERT}.get(state or "")
                if phase:
                    self.calls.add(Site(COMMIT, f"atom {state}", row["name"], phase))

    # qemu-img ----------------------------------------------------------------------------

    def qemu_img_calls(self) -> set[Site]:
        calls = set()
        log = self.bin / "calls"
        if log.exists():
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    calls.add(Site(QEMU_IMG, parts[2], parts[0], parts[1]))
        return calls

    def qemu_img_fired(self) -> int:
        fired = self.bin / "fired"
        return len(fired.read_text().splitlines()) if fired.exists() else 0

    def all_calls(self) -> set[Site]:
        return self.calls | self.qemu_img_calls()

    def fired_count(self) -> int:
        return len(self.fired) + self.qemu_img_fired()

    # installing the wrappers -------------------------------------------------------------

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._install_qemu_img(monkeypatch)
        self._install_libvirt(monkeypatch)
        self._install_netlink(monkeypatch)
        self._install_sqlite()

    def uninstall(self) -> None:
        self._uninstall_sqlite()

    def _install_libvirt(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open = libvirt.open

        def open_wrapped(uri: str | None = None) -> Any:
            return _Proxy(real_open(uri), "", self)

        monkeypatch.setattr(libvirt, "open", open_wrapped)

    def _install_netlink(self, monkeypatch: pytest.MonkeyPatch) -> None:
        injector = self

        class FaultyIPRoute(IPRoute):  # type: ignore[misc]
            def link(self, command: str, **kwargs: Any) -> Any:
                fields = "/".join(sorted(k for k in kwargs if k != "index"))
                injector.netlink_call(f"link {command} {fields}".strip())
                return IPRoute.__getattr__(self, "link")(command, **kwargs)

            def get_links(self, *args: Any, **kwargs: Any) -> Any:
                injector.netlink_call("get_links")
                return IPRoute.__getattr__(self, "get_links")(*args, **kwargs)

            def link_lookup(self, *args: Any, **kwargs: Any) -> Any:
                injector.netlink_call("link_lookup")
                return IPRoute.__getattr__(self, "link_lookup")(*args, **kwargs)

        for module in NETLINK_MODULES:
            monkeypatch.setattr(f"{module}.IPRoute", FaultyIPRoute)

    def _install_qemu_img(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = shutil.which("qemu-img")
        assert real, "qemu-img not found; run tools/install-deps.sh"
        self.bin.mkdir(exist_ok=True)
        script = self.bin / "qemu-img"
        script.write_text(QEMU_IMG_SCRIPT.replace("@REAL@", real))
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")

    def _install_sqlite(self) -> None:
        injector = self

        class FaultyCursor(sqlite3.Cursor):
            def execute(self, sql: str, parameters: Any = (), /) -> Any:
                injector.sql(sql, [parameters])
                return super().execute(sql, parameters)

            def executemany(self, sql: str, seq: Any, /) -> Any:
                rows = list(seq)
                injector.sql(sql, rows)
                if sql.lstrip().upper().startswith("INSERT INTO EVENTS"):
                    injector.commits_seen(rows)
                return super().executemany(sql, rows)

        class FaultyConnection(sqlite3.Connection):
            def cursor(self, factory: Any = None) -> Any:  # always ours
                return super().cursor(FaultyCursor)

        def do_connect(dialect: Any, _record: Any, _cargs: Any, cparams: dict) -> None:
            if dialect.name == "sqlite":
                cparams["factory"] = FaultyConnection

        self._do_connect = do_connect
        sa.event.listen(sa.Engine, "do_connect", do_connect)

    def _uninstall_sqlite(self) -> None:
        listener = getattr(self, "_do_connect", None)
        if listener is not None and sa.event.contains(sa.Engine, "do_connect", listener):
            sa.event.remove(sa.Engine, "do_connect", listener)


_KINDS = (
    (libvirt.virDomain, "domain"),
    (libvirt.virSecret, "secret"),
    (libvirt.virNWFilter, "nwfilter"),
)


def _wrapped(value: Any, injector: Injector) -> Any:
    for cls, kind in _KINDS:
        if isinstance(value, cls):
            return _Proxy(value, kind, injector)
    if isinstance(value, list):
        return [_wrapped(v, injector) for v in value]
    return value


class _Proxy:
    """A libvirt object whose every method goes through the injector first."""

    def __init__(self, real: Any, kind: str, injector: Injector):
        self._real = real
        self._kind = kind
        self._injector = injector

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name.startswith("_") or not callable(attr):
            return attr
        call = f"{self._kind}.{name}" if self._kind else name

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._injector.libvirt_call(
                call, lambda: _wrapped(attr(*args, **kwargs), self._injector)
            )

        return method


# Runs instead of qemu-img (first on PATH): records each call with the step and
# phase the agent is in (file "where"), fails the subcommand a "rule" names,
# once (renaming the rule away, atomic across processes) or every time.
QEMU_IMG_SCRIPT = r"""#!/bin/bash
d="$(dirname "$0")"
where="$(cat "$d/where" 2>/dev/null)"
[ -n "$where" ] && echo "$where $1" >> "$d/calls"
if [ -n "$where" ] && [ -e "$d/rule" ]; then
    read -r step phase sub mode < "$d/rule" 2>/dev/null
    if [ "$where" = "$step $phase" ] && [ "$1" = "$sub" ]; then
        if [ "$mode" = permanent ] || mv "$d/rule" "$d/rule.fired" 2>/dev/null; then
            echo "$1" >> "$d/fired"
            path=""
            for arg in "$@"; do case "$arg" in /*) path="$arg";; esac; done
            if [ "$mode" = permanent ]; then
                echo "qemu-img: $path: Could not create '$path': No space left on device" >&2
            else
                echo "qemu-img: $path: Failed to get \"write\" lock" >&2
                echo "Is another process using the image [$path]?" >&2
            fi
            exit 1
        fi
    fi
fi
exec @REAL@ "$@"
"""


@pytest.fixture
def injector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Injector]:
    """The fault injector, installed around this process's real parts for one test
    (the functional and integration conftests offer it to every test)."""
    found = Injector(tmp_path)
    found.install(monkeypatch)
    try:
        yield found
    finally:
        found.disarm()
        found.uninstall()
