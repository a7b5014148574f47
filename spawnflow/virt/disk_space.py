"""Free space on the filesystems a build writes to (the event log's, the instances')."""

from __future__ import annotations

import os

MIB = 1024 * 1024


def free_mb(path: str) -> int:
    """MiB an unprivileged writer could still use on the filesystem holding ``path``.

    (f_bavail, not f_bfree: the blocks reserved for root are the last resort of
    the host itself, not room for builds.)
    """
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize // MIB


def shortage(paths: list[str], min_free_mb: int) -> str | None:
    """Why a new build may not start for lack of space (None: there is room)."""
    if min_free_mb <= 0:
        return None
    for path in paths:
        try:
            free = free_mb(path)
        except FileNotFoundError:
            continue  # made on first use; its parent's filesystem is checked too
        if free < min_free_mb:
            return (
                f"only {free} MiB free on the filesystem of {path}, below "
                f"[DEFAULT] min_free_disk_mb = {min_free_mb}; new builds are refused "
                "until space is freed"
            )
    return None
