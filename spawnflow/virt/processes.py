"""Who a process is, beyond its pid: machine, boot, pid namespace and start time.

A pid alone names a process only on one machine, in one pid namespace, until
the pid is reused. The host lease records these beside the pid so that "the
owner's pid is gone, take over now" is decided only when the answer is
certain: same node name, same boot of the same kernel, same pid namespace,
and the pid either absent or now held by a process started at another time.
Anything else is "cannot tell from here", and the lease must expire instead.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

PROC = Path("/proc")
# Field 22 of /proc/<pid>/stat (1-based): the start time in clock ticks since
# boot. Counted after the ")" that ends field 2 (the command name, which may
# itself hold spaces and parentheses), where field 3 is the first.
_STARTTIME_AFTER_COMM = 22 - 3


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    """A process as a lease records it (None: unknown, e.g. an old lease row)."""

    node: str | None
    boot_id: str | None
    pid_ns: str | None
    pid: int
    start_time: int | None


def boot_id() -> str:
    """This kernel's boot id: shared by every container of a machine, new at each boot."""
    return (PROC / "sys/kernel/random/boot_id").read_text().strip()


def pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``): pids mean something only inside it."""
    return os.readlink(PROC / "self/ns/pid")


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when no such process is visible."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rpartition(")")[2].split()[_STARTTIME_AFTER_COMM])


def this_process() -> ProcessIdentity:
    """The identity of the calling process."""
    pid = os.getpid()
    return ProcessIdentity(
        node=os.uname().nodename,
        boot_id=boot_id(),
        pid_ns=pid_namespace(),
        pid=pid,
        start_time=start_time(pid),
    )


def certainly_dead(owner: ProcessIdentity) -> bool:
    """True only when ``owner`` is provably not running any more, as seen from here.

    That needs the owner to have lived in this very pid namespace of this very
    boot of this machine (same node name, boot id and pid namespace), and its
    pid to be free now or held by a process started at another time (the pid
    was reused). A different boot id is never taken as "rebooted, so dead":
    node names are not unique (containers, a second machine given the same
    name on a shared PostgreSQL), so it may as well be another machine whose
    owner is alive. Unknown fields (a lease written by an older spawnflow)
    prove nothing either.
    """
    if owner.boot_id is None or owner.node is None or owner.pid_ns is None:
        return False
    if owner.start_time is None:
        return False
    here = (os.uname().nodename, boot_id(), pid_namespace())
    if (owner.node, owner.boot_id, owner.pid_ns) != here:
        return False
    return start_time(owner.pid) != owner.start_time
