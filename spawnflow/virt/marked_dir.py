"""A directory that comes into being already marked with the build that made it.

A build proves it made a directory (and so may remove it on revert) by a
marker file inside it naming the build. Made in two calls (``mkdir``, then
write the marker), a crash between them leaves an unmarked directory that no
build owns and every later build trips over. :func:`make_marked_dir` closes
that window: the directory is made under a *staging* name, a hidden sibling
``.<name>.<owner>.tmp`` that only this owner uses, the marker is written and
fsynced inside it, and it is renamed into place with ``RENAME_NOREPLACE``
(atomic, and never over a directory someone else made meanwhile, which a plain
``rename`` would replace if it were empty). A crash leaves either the staging
directory, which the next call for the same owner, a revert
(:func:`remove_staging`) or agent start (:func:`clean_staging`) removes, or
the final directory already marked.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil

_STAGING_SUFFIX = ".tmp"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def staging_path(path: str, owner: str) -> str:
    """Where ``path`` is prepared for ``owner`` before its rename into place."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{owner}{_STAGING_SUFFIX}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_noreplace(src: str, dst: str) -> None:
    """``rename`` that fails with EEXIST if ``dst`` exists (even an empty directory)."""
    rc = _libc.renameat2(
        _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def _write_file(path: str, content: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def make_marked_dir(path: str, marker: str, owner: str, gid: int | None = None) -> bool:
    """Make directory ``path`` holding file ``marker`` that reads ``owner``, atomically.

    Mode 0700 (root only), or 0750 with group ``gid`` when given and running as
    root (the group QEMU runs as must reach the disks). Returns True if this
    call made it, False if ``path`` already existed (made by whoever: the
    caller reads the marker to know).
    """
    remove_staging(path, owner)
    if os.path.lexists(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = staging_path(path, owner)
    os.mkdir(tmp, mode=0o700)
    if gid is not None and os.geteuid() == 0:
        os.chown(tmp, 0, gid)
        # Group only, not others: QEMU (that group) must reach the disk.
        os.chmod(tmp, 0o750)  # noqa: S103 - group only, see above
    _write_file(os.path.join(tmp, marker), owner)
    _fsync_dir(tmp)
    try:
        _rename_noreplace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.EEXIST:
            return False
        raise
    _fsync_dir(parent)
    return True


def remove_staging(path: str, owner: str) -> bool:
    """Remove the staging directory a crash left for ``path`` and ``owner``; True if any."""
    tmp = staging_path(path, owner)
    if not os.path.isdir(tmp) or os.path.islink(tmp):
        return False
    shutil.rmtree(tmp)
    return True


def clean_staging(parent: str, marker: str) -> list[str]:
    """Remove every staging directory under ``parent`` a crash left; the paths removed.

    Only a directory named like one (``.<name>.<owner>.tmp``) that holds
    nothing but ``marker`` is removed: that is all :func:`make_marked_dir`
    ever puts in it, so anything else is not ours. Call it only when no build
    runs (agent start): a staging directory lives only inside one call.
    """
    removed: list[str] = []
    if not os.path.isdir(parent):
        return removed
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not (name.startswith(".") and name.endswith(_STAGING_SUFFIX)):
            continue
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        if set(os.listdir(path)) - {marker}:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed
