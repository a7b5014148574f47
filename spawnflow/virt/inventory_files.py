"""The host audit's view of spawnflow's files: instance directories, image-cache entries
and partial downloads under the instances path.

An instance directory is marked by the file its build wrote inside it before
it got its name (``flows.image``: the directory marker, or only the disk
marker when the directory was there before the build); a staging directory
(``.<instance>.<build>.tmp``, ``virt.marked_dir``) names its build in its
name. The image cache (``virt.images``) holds entries named by their content
digest and ``.part`` files being written; one ``fcntl.flock`` per key
(``<lock_dir>/<key>.lock``) tells whether a fetch or a lookup holds one now.
The markers are ``virt.instance_files``'.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from spawnflow.virt import instance_files
from spawnflow.virt.instance_disks import fsync_path, unlink
from spawnflow.virt.inventory import HostResource

INSTANCE_DIR = "instance_dir"
PARTIAL = "partial"
CACHE_DIR = "_base"
#: ``part`` of a directory the build did not make, only its disk (and disk marker).
DISK_ONLY = "disk"
#: ``part`` of a staging directory (``virt.marked_dir``) a crash left.
STAGING = "staging"
#: ``part`` of a ``.part`` file a fetch is writing now (its image's lock is held).
WRITING = "writing"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_STAGING = re.compile(r"^\.([^.]+)\.([^.]+)\.tmp$")


@dataclass(frozen=True)
class CacheEntry:
    """One image-cache entry: its path, content digest and last modification (or use)."""

    path: str
    digest: str
    mtime: float


def instance_dirs(instances_path: str) -> list[HostResource]:
    """Every directory under the instances path but the cache, with the build that made it.

    ``name`` is the path. A directory with only the disk marker has ``part``
    ``DISK_ONLY``: the build made the disk, not the directory.
    """
    found: list[HostResource] = []
    if not os.path.isdir(instances_path):
        return found
    for name in sorted(os.listdir(instances_path)):
        path = os.path.join(instances_path, name)
        if name == CACHE_DIR or os.path.islink(path) or not os.path.isdir(path):
            continue
        staging = _STAGING.match(name)
        if staging is not None:
            found.append(
                HostResource(
                    INSTANCE_DIR,
                    path,
                    staging[2],
                    staging[1],
                    part=STAGING,
                    detail="staging directory (a crash inside its making)",
                )
            )
            continue
        build = instance_files.made_by(path)
        part = None
        if build is None:
            build = instance_files.disk_made_by(path)
            part = DISK_ONLY if build else None
        found.append(HostResource(INSTANCE_DIR, path, build, name if build else None, part=part))
    return found


def remove_instance_dir(resource: HostResource) -> bool:
    """Remove what the build an ``instance_dirs`` resource names made there (if anything).

    ``instance_files.remove``: the markers are read again first, so a
    directory another build marked since stays.
    """
    if resource.build_id is None or resource.instance_uuid is None:
        return False
    final = os.path.join(os.path.dirname(resource.name), resource.instance_uuid)
    return instance_files.remove(final, resource.build_id)


def _lock_path(lock_dir: str, key: str) -> str:
    return os.path.join(lock_dir, key + ".lock")


@contextlib.contextmanager
def _try_lock(path: str) -> Iterator[bool]:
    """Hold the flock on ``path`` if nobody does (True), else yield False at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _held(lock_dir: str, key: str) -> bool:
    """Whether someone holds ``key``'s lock now (a missing lock file: nobody)."""
    path = _lock_path(lock_dir, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def partials(base_dir: str, lock_dir: str) -> list[HostResource]:
    """Every ``.part`` file of the cache; ``part`` is ``WRITING`` while a fetch writes it."""
    found: list[HostResource] = []
    if not os.path.isdir(base_dir):
        return found
    for name in sorted(os.listdir(base_dir)):
        if not name.endswith(".part"):
            continue
        writing = _held(lock_dir, name.split(".", 1)[0])
        found.append(
            HostResource(
                PARTIAL,
                os.path.join(base_dir, name),
                part=WRITING if writing else None,
                detail="being written" if writing else "left by a fetch that died",
            )
        )
    return found


def remove_partial(path: str, lock_dir: str) -> bool:
    """Remove the ``.part`` file ``path`` unless a fetch holds its lock; True if removed."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    key = os.path.basename(path).split(".", 1)[0]
    with _try_lock(_lock_path(lock_dir, key)) as locked:
        return locked and unlink(path)


def cache_entries(base_dir: str) -> list[CacheEntry]:
    """Every complete entry of the cache (a regular file named by a sha256)."""
    found: list[CacheEntry] = []
    if not os.path.isdir(base_dir):
        return found
    for name in sorted(os.listdir(base_dir)):
        path = os.path.join(base_dir, name)
        if not _DIGEST.match(name):
            continue
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append(CacheEntry(path, name, info.st_mtime))
    return found


def mark_used(entry: CacheEntry) -> None:
    """Say that a build uses ``entry`` now: its age for removal counts from here."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(entry.path)


def remove_entry(entry: CacheEntry, lock_dir: str, unused_since: float) -> bool:
    """Remove ``entry`` if it is still unmarked since ``unused_since``; False if kept.

    Under the entry's lock, taken without waiting: a fetch or lookup holding
    it is using the entry, so it stays. Its age is read again under the lock
    (an audit may have marked it used meanwhile).
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    with _try_lock(_lock_path(lock_dir, entry.digest)) as locked:
        if not locked:
            return False
        try:
            if os.lstat(entry.path).st_mtime >= unused_since:
                return False
        except FileNotFoundError:
            return False
        removed = unlink(entry.path)
        fsync_path(os.path.dirname(entry.path))
        return removed


def age(entry: CacheEntry, now: float | None = None) -> float:
    return (time.time() if now is None else now) - entry.mtime
