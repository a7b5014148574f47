"""A small real filesystem to run out of space on: ext4 in a loop-mounted image file.

``mounted_ext4`` makes the image (``mkfs.ext4`` with no blocks reserved for
root, so root runs out when everyone does), mounts it with ``mount -o loop``
and always unmounts it afterwards (lazily, as a last resort, so that a
process still holding a file never leaves the mount behind). ``fill`` takes
every free block with one file; removing that file gives the space back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1024 * 1024


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def mounted_ext4(mountpoint: Path, size_mb: int = 64) -> Iterator[Path]:
    """``mountpoint`` (made if missing) holding a fresh ext4 of ``size_mb`` MiB."""
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found; install e2fsprogs and mount (tools/install-deps.sh)")
    image = mountpoint.with_name(mountpoint.name + ".img")
    with open(image, "wb") as out:
        out.truncate(size_mb * MIB)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    if made.returncode != 0:
        pytest.fail(f"mkfs.ext4 {image}: {made.stderr.strip()}")
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-o", "loop", str(image), str(mountpoint))
    if mounted.returncode != 0:
        pytest.fail(f"mount -o loop {image} (needs root and loop devices): {mounted.stderr}")
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint)
        image.unlink(missing_ok=True)


def _unmount(mountpoint: Path) -> None:
    """Unmount, waiting a little for processes (QEMU, virtlogd) to let go; lazily at last."""
    for _attempt in range(50):
        if _run("umount", str(mountpoint)).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "-l", str(mountpoint))


def free_bytes(path: Path) -> int:
    """Bytes anyone may still write on the filesystem of ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fill(directory: Path) -> Path:
    """Take every free block of ``directory``'s filesystem with one file; return its path.

    Allocated (fallocate) first, then topped off with writes in halving
    chunks until even a small one gets ENOSPC.
    """
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, max(free_bytes(directory) - MIB, 1))
        os.lseek(fd, 0, os.SEEK_END)
        chunk = MIB
        while chunk >= 512:
            try:
                if os.write(fd, b"\0" * chunk) < chunk:
                    chunk //= 2
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler
