"""The netlink (pyroute2) queries the VIF drivers share: find, classify and delete links.

Callers open one ``IPRoute`` socket per call rather than a global one: sockets
are cheap, and a shared one would need locking across the engine's worker
threads.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from spawnflow.exceptions import VifError

IFF_UP = 0x1


def get_link(ipr: IPRoute, name: str) -> Any | None:
    """The link message of device ``name``, or None if there is none."""
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    try:
        return ipr.get_links(indexes[0])[0]
    except NetlinkError as exc:
        # Removed between the lookup and the query: same as never there.
        if exc.code == errno.ENODEV:
            return None
        raise


def link_kind(link: Any) -> str | None:
    """The link's kind (``bridge``, ``tun``, ...), None for a plain device."""
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def tap_in_use(link: Any) -> bool:
    """True if some process holds the tap open (QEMU of a running domain).

    The tun driver turns the carrier on when a file descriptor attaches to the
    device and off when the last one detaches, whatever the admin state.
    """
    return bool(link.get("IFLA_CARRIER"))


def delete_link(ipr: IPRoute, index: int) -> None:
    """Delete a link, treating "already gone" as success."""
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def tap_exists(name: str) -> bool:
    """True if a network device called ``name`` exists (any kind)."""
    try:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=name))
    except (NetlinkError, OSError) as exc:
        raise VifError(f"cannot look up device {name!r}: {exc}") from exc
