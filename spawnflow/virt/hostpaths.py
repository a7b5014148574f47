"""Paths a build may reach on this host: containment checks and link-safe opens.

The agent runs as root, so a path from a spec is only used if it resolves
(links followed, ``..`` collapsed) inside a directory the operator allowed.
``open_beneath`` then opens it again one component at a time from that
directory with ``O_NOFOLLOW``, so a link swapped in after the check cannot lead
outside; it opens with ``O_NONBLOCK`` and checks the file type before reading,
so a FIFO or a device planted in an allowed directory never blocks a step.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable
from pathlib import Path


def resolve(path: str) -> str:
    """The canonical absolute form of ``path`` (links followed, ``..`` collapsed)."""
    return os.path.realpath(path)


def is_within(path: str, directory: str) -> bool:
    """Whether the resolved ``path`` is ``directory`` itself or lies below it (both resolved)."""
    path, directory = resolve(path), resolve(directory)
    return os.path.commonpath([path, directory]) == directory


def containing_dir(path: str, directories: Iterable[str]) -> str | None:
    """The first of ``directories`` (resolved) that holds the resolved ``path``, else None.

    A directory entry equal to the path itself does not count: what is allowed
    is what lies *inside* it.
    """
    real = resolve(path)
    for directory in directories:
        base = resolve(directory)
        if real != base and os.path.commonpath([real, base]) == base:
            return base
    return None


def matches_glob(path: str, patterns: Iterable[str]) -> str | None:
    """The first glob of ``patterns`` the resolved ``path`` matches, else None."""
    real = resolve(path)
    for pattern in patterns:
        if fnmatch.fnmatchcase(real, pattern):
            return pattern
    return None


def open_beneath(directory: str, path: str, flags: int = os.O_RDONLY) -> int:
    """Open ``path`` (resolved, inside ``directory``) without following any link.

    Walks from ``directory`` one component at a time (``O_NOFOLLOW``, directories
    with ``O_DIRECTORY``), so the file opened is the one the containment check
    saw unless someone replaced it with a regular file, which a check cannot
    prevent anyway. The last component must be a regular file; the returned
    descriptor is blocking again. Raises ``OSError`` (``ELOOP`` for a link,
    ``EINVAL`` for a non-regular file, ``EXDEV`` if ``path`` is outside).
    """
    base = resolve(directory)
    real = resolve(path)
    if real == base or os.path.commonpath([real, base]) != base:
        raise OSError(18, f"{path} is not inside {directory}")  # EXDEV
    parts = os.path.relpath(real, base).split(os.sep)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nxt = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
        # Looked at before opening: opening a device node can itself act
        # (a tape rewinds), so only a regular file is ever opened.
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
            raise OSError(22, f"{path} is not a regular file")  # EINVAL
        leaf = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(leaf).st_mode):
            raise OSError(22, f"{path} is not a regular file")  # EINVAL
        os.set_blocking(leaf, True)
    except BaseException:
        os.close(leaf)
        raise
    return leaf


def changeable_by_others(directory: str) -> str | None:
    """The first directory from ``/`` down to ``directory`` (resolved) that a user
    other than root could change an entry of, or None.

    A path checked now is opened later by someone else (QEMU opens a volume
    path itself): if a non-root user may rename or replace entries on the way,
    the file checked is not the file opened. A directory qualifies as safe when
    root owns it and neither group nor others may write to it, or when it is
    sticky (``/tmp``: others may add entries but not replace root's).
    """
    current = "/"
    for part in ["", *Path(resolve(directory)).parts[1:]]:
        current = os.path.join(current, part) if part else current
        info = os.stat(current)
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if info.st_uid != 0 or (writable and not info.st_mode & stat.S_ISVTX):
            return current
    return None
