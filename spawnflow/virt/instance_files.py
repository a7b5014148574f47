"""An instance's directory and root disk, each marked with the build that made it.

The directory ``<instances_path>/<instance uuid>`` holds ``MARKER`` (the id
of the build that made it, written before the directory appears under its
name: :func:`~spawnflow.virt.marked_dir.make_marked_dir`). A root disk made
in a directory that was already there is marked by ``DISK_MARKER`` next to
it. The markers, not a recorded result, say what a build may remove: a
result may be lost (a crash) or stale (a later build of the same instance
owns the same paths).
"""

from __future__ import annotations

import contextlib
import os
import shutil

from spawnflow.virt import instance_disks
from spawnflow.virt.marked_dir import remove_staging

MARKER = ".spawnflow-build"
DISK_MARKER = ".spawnflow-disk-build"


def read_marker(path: str) -> str | None:
    """The build id a marker file holds, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def write_marker(path: str, build_id: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(build_id)
        f.flush()
        os.fsync(f.fileno())


def made_by(instance_dir: str) -> str | None:
    """The build that made ``instance_dir`` (its marker), None if unmarked or absent."""
    return read_marker(os.path.join(instance_dir, MARKER))


def disk_made_by(instance_dir: str) -> str | None:
    """The build that made the root disk in an existing directory (its marker), or None."""
    return read_marker(os.path.join(instance_dir, DISK_MARKER))


def remove(instance_dir: str, build_id: str) -> bool:
    """Remove what build ``build_id`` made of the instance's files; True if anything.

    The whole directory if the build made it and no other build made the
    disk in it (a later build of the instance reuses the directory); else
    only the root disk (and its marker) if the build made that; a staging
    directory a crash left inside ``make_marked_dir`` either way. Anything
    else is left alone.
    """
    removed = remove_staging(instance_dir, build_id)
    disk_owner = disk_made_by(instance_dir)
    if made_by(instance_dir) == build_id and disk_owner in (None, build_id):
        shutil.rmtree(instance_dir, ignore_errors=False)
        return True
    if disk_made_by(instance_dir) == build_id:
        removed = instance_disks.remove(os.path.join(instance_dir, "disk")) or removed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(instance_dir, DISK_MARKER))
            removed = True
    return removed
