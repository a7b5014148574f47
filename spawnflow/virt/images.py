"""Crash-safe image cache (nova's ``_base`` directory) and instance disk creation.

Cached images live at ``base_dir/<sha1(image_id)>``. A download streams into
``<cache>.part`` next to it, is checked (sha256, then format with qemu-img) and
only then fsynced and atomically renamed into place, so the final name always
holds a complete, verified image. A ``<cache>.sha256`` sidecar records the
digest of what was downloaded: a later fetch that names a checksum compares it
with the sidecar instead of re-hashing a multi-GB file. A cached image is never
replaced, because running instances may use it as their backing file.

One ``fcntl.flock`` per image (``lock_dir/<sha1>.lock``) serialises fetches
across threads and processes (each call opens its own file description, so
threads of one process exclude each other too). Lock files are never deleted:
unlinking a lock file another process is waiting on would let two holders in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from spawnflow.exceptions import (
    HostError,
    ImageChecksumMismatch,
    ImageError,
    ImageUnacceptable,
    ImageUnreachable,
)
from spawnflow.virt import qemu_img

_CHUNK = 1024 * 1024
_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class FetchResult:
    path: str
    downloaded: bool  # False when the image was already cached


@contextlib.contextmanager
def _flock(path: str, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on ``path``; BlockingIOError if non-blocking and held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _fsync(path: str) -> None:
    """fsync a file, or a directory to make a rename in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _check_disk_format(what: str, disk_format: str) -> None:
    if disk_format not in _FORMATS:
        raise ImageUnacceptable(f"{what}: disk_format {disk_format!r} is not qcow2 or raw")


class ImageCache:
    """Download-once cache of base images plus creation of per-instance disks."""

    def __init__(self, base_dir: str, lock_dir: str, http_timeout: float = 60.0) -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.lock_dir = os.path.abspath(lock_dir)
        self.http_timeout = http_timeout

    def cache_path(self, image_id: str) -> str:
        return os.path.join(self.base_dir, hashlib.sha1(image_id.encode()).hexdigest())

    def _lock_path(self, key: str) -> str:
        return os.path.join(self.lock_dir, key + ".lock")

    def fetch(
        self, image_id: str, source: str, expected_sha256: str | None, disk_format: str
    ) -> FetchResult:
        """Return the cached copy of ``image_id``, downloading it from ``source`` if absent.

        ``source`` is a local path, ``file://`` or ``http(s)://`` URL;
        ``expected_sha256`` is bare hex (no ``sha256:`` prefix) or None.
        """
        _check_disk_format(f"image {image_id}", disk_format)
        expected = expected_sha256.strip().lower() if expected_sha256 else None
        os.makedirs(self.base_dir, exist_ok=True)
        os.makedirs(self.lock_dir, exist_ok=True)
        final = self.cache_path(image_id)
        with _flock(self._lock_path(os.path.basename(final))):
            # Re-checked under the lock: another thread or process may just have
            # finished downloading the same image while we waited.
            if os.path.exists(final):
                self._check_cached(image_id, final, expected, disk_format)
                return FetchResult(final, False)
            part = final + ".part"
            try:
                actual = self._download(source, part)
                if expected is not None and actual != expected:
                    raise ImageChecksumMismatch(
                        f"image {image_id} from {source} has sha256 {actual} "
                        f"but the spec expects sha256 {expected}"
                    )
                self._check_format(image_id, part, disk_format)
                self._write_sidecar(final, actual)
                _fsync(part)
                os.rename(part, final)
            except BaseException:
                _unlink(part)
                raise
            _fsync(self.base_dir)
            return FetchResult(final, True)

    def _download(self, source: str, part: str) -> str:
        """Stream ``source`` into ``part``; return its sha256 hex digest."""
        digest = hashlib.sha256()
        try:
            with open(part, "wb") as out:
                for chunk in self._read_source(source):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise HostError(f"cannot write image cache file {part}: {exc}") from exc
        return digest.hexdigest()

    def _read_source(self, source: str) -> Iterator[bytes]:
        """Yield the bytes of ``source``; any read failure becomes ImageUnreachable."""
        url = urllib.parse.urlsplit(source) if "://" in source else None
        try:
            if url is None or url.scheme == "file":
                if url is not None and url.netloc not in ("", "localhost"):
                    raise ImageUnreachable(f"image source {source}: remote file:// hosts "
                                           "are not supported")
                path = source if url is None else urllib.request.url2pathname(url.path)
                with open(path, "rb") as f:
                    yield from iter(lambda: f.read(_CHUNK), b"")
            elif url.scheme in ("http", "https"):
                with urllib.request.urlopen(source, timeout=self.http_timeout) as resp:
                    # read(n) raises IncompleteRead if the body is shorter than
                    # Content-Length, so a truncated download is never accepted.
                    yield from iter(lambda: resp.read(_CHUNK), b"")
            else:
                raise ImageUnreachable(f"image source {source}: unsupported URL scheme "
                                       f"{url.scheme!r}")
        except urllib.error.HTTPError as exc:
            raise ImageUnreachable(f"image source {source}: HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise ImageUnreachable(f"image source {source} unreachable: {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ImageUnreachable(f"image source {source} unreadable: {exc!r}") from exc

    def _check_format(self, image_id: str, path: str, disk_format: str) -> None:
        """Refuse images whose real format differs from the declared one, or that
        reference other files (a backing or data file could expose host files)."""
        info = qemu_img.info(path)
        if info.format != disk_format:
            raise ImageUnacceptable(f"image {image_id} is declared {disk_format} but qemu-img "
                                    f"detects format {info.format}")
        if info.backing_file:
            raise ImageUnacceptable(f"image {image_id} has a backing file "
                                    f"({info.backing_file}); refusing it")
        if info.data_file:
            raise ImageUnacceptable(f"image {image_id} has an external data file "
                                    f"({info.data_file}); refusing it")

    def _write_sidecar(self, final: str, digest: str) -> None:
        tmp = final + ".sha256.part"  # *.part, so clean_partial removes it after a crash
        with open(tmp, "w") as f:
            f.write(digest + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final + ".sha256")

    def _check_cached(
        self, image_id: str, final: str, expected: str | None, disk_format: str
    ) -> None:
        self._check_format(image_id, final, disk_format)
        if expected is None:
            return
        try:
            with open(final + ".sha256") as f:
                recorded = f.read().strip()
        except FileNotFoundError:
            # Cached by something that wrote no sidecar: hash once and record it.
            digest = hashlib.sha256()
            with open(final, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
            recorded = digest.hexdigest()
            self._write_sidecar(final, recorded)
        if recorded != expected:
            raise ImageChecksumMismatch(
                f"cached image {image_id} at {final} has sha256 {recorded} but the spec "
                f"expects sha256 {expected}; it is not replaced because instances may use it"
            )

    def clean_partial(self) -> list[str]:
        """Remove ``*.part`` files left by a crash; skip those whose image lock is held."""
        if not os.path.isdir(self.base_dir):
            return []
        os.makedirs(self.lock_dir, exist_ok=True)
        removed = []
        for name in sorted(os.listdir(self.base_dir)):
            if not name.endswith(".part"):
                continue
            key = name.split(".", 1)[0]
            try:
                with _flock(self._lock_path(key), blocking=False):
                    path = os.path.join(self.base_dir, name)
                    if _unlink(path):
                        removed.append(path)
            except BlockingIOError:
                continue  # a fetch of this image is in progress
        return removed

    def create_instance_disk(
        self, base_path: str, disk_path: str, disk_format: str, size_bytes: int | None
    ) -> bool:
        """Create ``disk_path`` from the cached ``base_path``; True if this call created it.

        qcow2 makes an overlay (backing format recorded with ``-F``), raw makes a
        sparse copy. The disk is grown to ``size_bytes`` (None or 0 = the image's
        own size, as nova's root_gb=0). Not safe for two concurrent callers on the
        same ``disk_path``; a build owns its disks.
        """
        _check_disk_format(f"instance disk {disk_path}", disk_format)
        if os.path.exists(disk_path):
            self._check_existing_disk(base_path, disk_path, disk_format)
            return False
        base = qemu_img.info(base_path)
        if size_bytes and size_bytes < base.virtual_size:
            # nova's FlavorDiskTooSmall: shrinking would cut off the guest's data.
            raise ImageUnacceptable(
                f"flavor root_gb ({size_bytes} bytes) is smaller than the virtual size "
                f"({base.virtual_size} bytes) of image {base_path}"
            )
        tmp = disk_path + ".tmp"
        _unlink(tmp)  # a leftover .tmp is a half-made disk from a crash, never in use
        try:
            if disk_format == "qcow2":
                qemu_img.create_overlay(tmp, base_path, base.format)
            else:
                qemu_img.convert(base_path, tmp, base.format, "raw")
            if size_bytes and size_bytes > base.virtual_size:
                qemu_img.resize(tmp, size_bytes, disk_format)
            _fsync(tmp)
            # link() fails if disk_path appeared meanwhile, where rename() would
            # silently replace a disk this call did not create.
            os.link(tmp, disk_path)
        except FileExistsError:
            _unlink(tmp)
            self._check_existing_disk(base_path, disk_path, disk_format)
            return False
        except BaseException:
            _unlink(tmp)
            raise
        _unlink(tmp)
        _fsync(os.path.dirname(os.path.abspath(disk_path)))
        return True

    @staticmethod
    def _check_existing_disk(base_path: str, disk_path: str, disk_format: str) -> None:
        """Raise unless ``disk_path`` is the disk an earlier call made from ``base_path``."""
        if disk_format == "raw":
            # Not probed: a raw disk's first bytes belong to the guest (it may have
            # written a qcow2 header), and link() only ever exposes complete disks.
            ok = os.path.isfile(disk_path)
        else:
            info = qemu_img.info(disk_path)
            backing = os.path.join(os.path.dirname(disk_path), info.backing_file or "")
            ok = (info.format == "qcow2" and bool(info.backing_file)
                  and os.path.realpath(backing) == os.path.realpath(base_path))
        if not ok:
            raise ImageError(f"{disk_path} already exists but is not a {disk_format} disk "
                             f"made from {base_path}; refusing to touch it")

    def remove_instance_disk(self, disk_path: str) -> bool:
        """Delete ``disk_path`` and any stale ``.tmp``; True if the disk existed."""
        _unlink(disk_path + ".tmp")
        return _unlink(disk_path)
