"""Per-instance disks made from a cached base image, and their half-made leftovers.

A disk is made under ``<disk>.tmp`` by ``qemu-img`` (a qcow2 overlay, or a raw
copy grown to the flavor's size), fsynced, and only then linked to its name:
a disk under its own name is always complete. ``link()`` rather than
``rename()``: it fails if the name appeared meanwhile, where a rename would
silently replace a disk this call did not make.

A ``.tmp`` lives only inside :func:`create`: one left behind is a call that
was killed (kill -9, power loss) or ended abruptly. The next call for the same
disk removes it first, a revert removes it with the disk, and an agent start
removes every one under the instances path (:func:`clean_partial`), since
then no build runs: a raw copy of a large image is as big as the image.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable

from spawnflow.exceptions import ImageError, ImageUnacceptable
from spawnflow.virt import qemu_img

FORMATS = ("qcow2", "raw")
PARTIAL_SUFFIX = ".tmp"
DISK_NAME = "disk"  # the root disk in an instance directory (``flows.image``)


def check_disk_format(what: str, disk_format: str) -> None:
    if disk_format not in FORMATS:
        raise ImageUnacceptable(f"{what}: disk_format {disk_format!r} is not qcow2 or raw")


def fsync_path(path: str) -> None:
    """fsync a file, or a directory to make a rename in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: str) -> bool:
    """Remove ``path``; False if it was not there."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def create(
    base_path: str,
    disk_path: str,
    disk_format: str,
    size_bytes: int | None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Create ``disk_path`` from the cached ``base_path``; True if this call created it.

    qcow2 makes an overlay (backing format recorded with ``-F``), raw makes a
    sparse copy. The disk is grown to ``size_bytes`` (None or 0 = the image's
    own size, as nova's root_gb=0). Not safe for two concurrent callers on the
    same ``disk_path``; a build owns its disks. ``should_stop`` ends a running
    qemu-img (``HostCallInterrupted``), and the half-made ``.tmp`` is removed.
    """
    check_disk_format(f"instance disk {disk_path}", disk_format)
    stop = should_stop
    if os.path.exists(disk_path):
        check_existing(base_path, disk_path, disk_format, stop)
        return False
    base = qemu_img.info(base_path, should_stop=stop)
    if size_bytes and size_bytes < base.virtual_size:
        # nova's FlavorDiskTooSmall: shrinking would cut off the guest's data.
        raise ImageUnacceptable(
            f"flavor root_gb ({size_bytes} bytes) is smaller than the virtual size "
            f"({base.virtual_size} bytes) of image {base_path}"
        )
    tmp = disk_path + PARTIAL_SUFFIX
    unlink(tmp)  # a leftover .tmp is a half-made disk from a crash, never in use
    try:
        if disk_format == "qcow2":
            qemu_img.create_overlay(tmp, base_path, base.format, should_stop=stop)
        else:
            qemu_img.convert(base_path, tmp, base.format, "raw", should_stop=stop)
        if size_bytes and size_bytes > base.virtual_size:
            qemu_img.resize(tmp, size_bytes, disk_format, should_stop=stop)
        fsync_path(tmp)
        os.link(tmp, disk_path)
    except FileExistsError:
        unlink(tmp)
        check_existing(base_path, disk_path, disk_format, stop)
        return False
    except BaseException:
        unlink(tmp)
        raise
    unlink(tmp)
    fsync_path(os.path.dirname(os.path.abspath(disk_path)))
    return True


def check_existing(
    base_path: str,
    disk_path: str,
    disk_format: str,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Raise unless ``disk_path`` is the disk an earlier call made from ``base_path``."""
    if disk_format == "raw":
        # Not probed: a raw disk's first bytes belong to the guest (it may have
        # written a qcow2 header), and link() only ever exposes complete disks.
        ok = os.path.isfile(disk_path)
    else:
        info = qemu_img.info(disk_path, should_stop=should_stop)
        backing = os.path.join(os.path.dirname(disk_path), info.backing_file or "")
        ok = (
            info.format == "qcow2"
            and bool(info.backing_file)
            and os.path.realpath(backing) == os.path.realpath(base_path)
        )
    if not ok:
        raise ImageError(
            f"{disk_path} already exists but is not a {disk_format} disk "
            f"made from {base_path}; refusing to touch it"
        )


def remove(disk_path: str) -> bool:
    """Delete ``disk_path`` and any stale ``.tmp``; True if the disk existed."""
    unlink(disk_path + PARTIAL_SUFFIX)
    return unlink(disk_path)


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def clean_partial(instances_path: str) -> list[str]:
    """Remove the half-made root disks (``<instance uuid>/disk.tmp``) a killed agent left.

    Call it only while no build runs (agent start, lease held): a ``.tmp``
    lives only inside :func:`create`. Only a regular file (never a link) of
    that name, in a directory named by an instance uuid, is removed.
    """
    removed: list[str] = []
    if not os.path.isdir(instances_path):
        return removed
    for name in sorted(os.listdir(instances_path)):
        directory = os.path.join(instances_path, name)
        if not _is_uuid(name) or os.path.islink(directory) or not os.path.isdir(directory):
            continue
        tmp = os.path.join(directory, DISK_NAME + PARTIAL_SUFFIX)
        try:
            info = os.lstat(tmp)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode) and unlink(tmp):
            removed.append(tmp)
    return removed
