"""Writing one ``.part`` file of the image cache: hash while streaming, bound size and space.

The fetch (``image_fetch``) hands each chunk to a :class:`PartWriter`; the
cache (``images``) publishes the file under its digest once it is complete.
The limits are ``[images] max_size_gb`` and ``reserved_disk_mb``, checked
against a declared length first and again while writing, so a server that
lies about Content-Length or a disk that fills meanwhile stops the fetch.
"""

from __future__ import annotations

import hashlib
import os

from spawnflow.exceptions import ImageError, ImageUnacceptable

GiB = 1024**3
MiB = 1024**2
_SPACE_CHECK_EVERY = 64 * MiB  # statvfs while streaming, every this many bytes


class PartWriter:
    """The ``Sink`` of a fetch: writes the ``.part`` file, hashes, bounds size and space."""

    def __init__(
        self, fd: int, label: str, max_bytes: int, reserved_bytes: int, base_dir: str
    ) -> None:
        self.fd = fd
        self.label = label
        self.max_bytes = max_bytes
        self.reserved_bytes = reserved_bytes
        self.base_dir = base_dir
        self.digest = hashlib.sha256()
        self.written = 0
        self._next_space_check = _SPACE_CHECK_EVERY

    def _too_big(self, size: int) -> ImageUnacceptable:
        return ImageUnacceptable(
            f"image {self.label} is {'at least ' if size == self.written else ''}{size} "
            f"bytes, more than [images] max_size_gb ({self.max_bytes / GiB:g} GiB)"
        )

    def _check_space(self, needed: int) -> None:
        st = os.statvfs(self.base_dir)
        free = st.f_bavail * st.f_frsize
        if free - needed < self.reserved_bytes:
            raise ImageError(
                f"not enough free space for image {self.label} in {self.base_dir}: "
                f"{free // MiB} MiB free, {needed // MiB} MiB more needed, and [images] "
                f"reserved_disk_mb keeps {self.reserved_bytes // MiB} MiB free"
            )

    def begin(self, length: int | None) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest = hashlib.sha256()
        self.written = 0
        self._next_space_check = _SPACE_CHECK_EVERY
        if length is not None and length > self.max_bytes:
            raise self._too_big(length)
        self._check_space(length or 0)

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.max_bytes:
            raise self._too_big(self.written)
        if self.written >= self._next_space_check:
            self._next_space_check += _SPACE_CHECK_EVERY
            self._check_space(0)
        self.digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]
