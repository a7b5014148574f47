"""Content-addressed image cache (nova's ``_base`` directory).

Instance disks made from its entries are :mod:`spawnflow.virt.instance_disks`'
(``create_instance_disk`` and ``remove_instance_disk`` are kept here for callers).

An entry is named by the sha256 of its content: ``base_dir/<sha256>``. The
spec's ``image.id`` is a label for messages only, so no build can choose the
name another build's image is found under, and an image re-published at the
same URL simply becomes a new entry. A fetch streams into a ``.part`` file
(mode 0600 from its creation), hashes while streaming, checks the digest (when
the spec gives one) and the format (qemu-img), sets the entry's final owner
and mode, fsyncs, and only then renames it to its digest: a name that is a
digest always holds a complete, verified image, so a reuse trusts the name
and re-checks only the format (cheap), never re-hashes. A cached entry is
never replaced, because running instances may use it as their backing file.

- With a checksum, the entry with that digest is reused without fetching.
- Without one, the source is fetched (there is no other way to know what it
  holds now), and if an entry with the resulting digest exists the new copy is
  dropped and that entry is used.

Entries are readable by root and ``[images] cache_group`` (0640, directory
0750) when that group exists, else by root only (0600, directory 0700).

One ``fcntl.flock`` per key (``lock_dir/<key>.lock``; the key is the digest,
or ``src-<hash of the masked source>`` while a fetch without checksum runs)
serialises fetches across threads and processes (each call opens its own file
description, so threads of one process exclude each other too). Lock files
are never deleted: unlinking a lock file another process is waiting on would
let two holders in. Sources are read by ``image_fetch`` within the limits of
``[images]``; what may be read at all is ``image_sources.AllowedSources``.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from oslo_config import cfg

from spawnflow import conf as sf_conf
from spawnflow.exceptions import (
    HostError,
    ImageChecksumMismatch,
    ImageError,
    ImageSourceRefused,
    ImageUnacceptable,
)
from spawnflow.persistence.redact import mask_url
from spawnflow.virt import instance_disks, qemu_img
from spawnflow.virt.image_fetch import FetchLimits, read_http, read_local
from spawnflow.virt.image_part import PartWriter
from spawnflow.virt.image_sources import AllowedSources, SourceRefused
from spawnflow.virt.instance_disks import check_disk_format, fsync_path, unlink

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class FetchResult:
    path: str
    downloaded: bool  # False when an existing entry was used (nothing new written)


@dataclass(frozen=True)
class CachePolicy:
    """What a fetch may read and how far it may go (``[images]``)."""

    allowed: AllowedSources = field(default_factory=lambda: AllowedSources([]))
    limits: FetchLimits = field(default_factory=FetchLimits)
    max_bytes: int = 50 * GiB
    reserved_bytes: int = 1024 * MiB
    cache_group: str | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> CachePolicy:
        opts = conf.images
        return cls(
            allowed=allowed_sources(conf),
            limits=FetchLimits(
                fetch_timeout=float(opts.fetch_timeout),
                stall_timeout=float(opts.stall_timeout),
                retries=opts.fetch_retries,
                ca_file=opts.ca_file or None,
            ),
            max_bytes=int(opts.max_size_gb * GiB),
            reserved_bytes=opts.reserved_disk_mb * MiB,
            cache_group=opts.cache_group or None,
        )


def allowed_sources(conf: cfg.ConfigOpts) -> AllowedSources:
    """``[images] allowed_sources``, with spawnflow's own files refused whatever it says.

    Instance disks, the cache itself and the SQLite event log are never an
    image source: a build could otherwise hand another instance's disk or the
    database to its guest. (state_path as
    a whole is not refused: the default source directory lies inside it.)
    """
    never = [path for what, path in sf_conf.protected_paths(conf) if what != "state_path"]
    return AllowedSources(conf.images.allowed_sources, never=never)


def group_id(name: str | None) -> int | None:
    """The gid of group ``name``, or None when it is unset or does not exist."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@contextlib.contextmanager
def _flock(path: str, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on ``path``; BlockingIOError if non-blocking and held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


class ImageCache:
    """Content-addressed cache of base images plus creation of per-instance disks."""

    def __init__(self, base_dir: str, lock_dir: str, policy: CachePolicy | None = None) -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.lock_dir = os.path.abspath(lock_dir)
        self.policy = policy or CachePolicy()
        self._gid = group_id(self.policy.cache_group)

    @property
    def file_mode(self) -> int:
        return 0o640 if self._gid is not None else 0o600

    @property
    def dir_mode(self) -> int:
        return 0o750 if self._gid is not None else 0o700

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> ImageCache:
        """This host's cache: ``<instances_path>/_base``, locks under state_path."""
        return cls(
            os.path.join(sf_conf.instances_path(conf), "_base"),
            os.path.join(conf.state_path, "locks"),
            CachePolicy.from_conf(conf),
        )

    def entry_path(self, sha256: str) -> str:
        """Where the entry with content digest ``sha256`` (bare hex) lives."""
        return os.path.join(self.base_dir, sha256.lower())

    def _lock_path(self, key: str) -> str:
        return os.path.join(self.lock_dir, key + ".lock")

    def _ensure_dirs(self) -> None:
        """Create the cache and lock directories, never readable by other users."""
        os.makedirs(self.base_dir, exist_ok=True)
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.base_dir, 0, self._gid if self._gid is not None else 0)
        os.chmod(self.base_dir, self.dir_mode)  # also tightens a cache made 0755 before

    def lookup(
        self,
        expected_sha256: str,
        disk_format: str,
        label: str = "",
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> FetchResult | None:
        """The entry with this digest, format-checked, or None when it is not cached."""
        final = self.entry_path(expected_sha256.strip())
        if not os.path.isdir(self.base_dir):
            return None
        self._ensure_dirs()
        with _flock(self._lock_path(os.path.basename(final))):
            if not os.path.lexists(final):
                return None
            self._check_cached(label or os.path.basename(final), final, disk_format, should_stop)
            return FetchResult(final, False)

    def fetch(
        self,
        source: str,
        expected_sha256: str | None,
        disk_format: str,
        *,
        label: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FetchResult:
        """The cache entry holding ``source``'s content, fetching it unless cached.

        ``source`` is a local path, ``file://`` or ``http(s)://`` URL inside
        ``[images] allowed_sources``; ``expected_sha256`` is bare hex (no
        ``sha256:`` prefix) or None; ``label`` names the image in errors (the
        masked source by default); ``should_stop`` is polled while fetching
        and ends the fetch (``ImageFetchInterrupted``) when it returns True,
        or the format check (``HostCallInterrupted``); the ``.part`` file is
        removed either way.
        """
        label = label or repr(mask_url(source))
        check_disk_format(f"image {label}", disk_format)
        expected = expected_sha256.strip().lower() if expected_sha256 else None
        try:
            local = self.policy.allowed.check(source, resolver=None)
        except SourceRefused as exc:
            raise ImageSourceRefused(f"image source {exc}") from None
        self._ensure_dirs()
        if expected is not None:
            with _flock(self._lock_path(expected)):
                # Re-checked under the lock: another thread or process may just
                # have finished fetching the same image while we waited.
                final = self.entry_path(expected)
                if os.path.lexists(final):
                    self._check_cached(label, final, disk_format, should_stop)
                    return FetchResult(final, False)
                part = final + ".part"
                return self._fetch_into(
                    part, source, local, expected, disk_format, label, should_stop
                )
        key = "src-" + hashlib.sha256(mask_url(source).encode()).hexdigest()[:32]
        with _flock(self._lock_path(key)):
            part = os.path.join(self.base_dir, key + ".part")
            return self._fetch_into(part, source, local, None, disk_format, label, should_stop)

    def _fetch_into(
        self,
        part: str,
        source: str,
        local: tuple[str, str] | None,
        expected: str | None,
        disk_format: str,
        label: str,
        should_stop: Callable[[], bool] | None,
    ) -> FetchResult:
        """Fetch into ``part`` (whose lock the caller holds), verify, publish by digest."""
        unlink(part)  # a leftover of a crash; the lock says no one is writing it
        try:
            fd = os.open(
                part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise HostError(f"cannot create image cache file {part}: {exc.strerror}") from exc
        try:
            try:
                actual = self._write_part(fd, part, source, local, label, should_stop)
                if expected is not None and actual != expected:
                    raise ImageChecksumMismatch(
                        f"image {label} from {mask_url(source)!r} has sha256 {actual} "
                        f"but the spec expects sha256 {expected}"
                    )
                self._check_format(label, part, disk_format, should_stop)
                if os.geteuid() == 0:
                    os.fchown(fd, 0, self._gid if self._gid is not None else 0)
                os.fchmod(fd, self.file_mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            return self._publish(
                part, actual, expected is not None, label, disk_format, should_stop
            )
        except OSError as exc:
            unlink(part)
            raise HostError(f"cannot write image cache file {part}: {exc.strerror}") from exc
        except BaseException:
            unlink(part)
            raise

    def _write_part(
        self,
        fd: int,
        part: str,
        source: str,
        local: tuple[str, str] | None,
        label: str,
        should_stop: Callable[[], bool] | None,
    ) -> str:
        """Stream the source into ``fd`` (the ``part`` file); return its sha256."""
        policy = self.policy
        writer = PartWriter(fd, label, policy.max_bytes, policy.reserved_bytes, self.base_dir)
        if local is not None:
            read_local(*local, writer, limits=policy.limits, should_stop=should_stop)
        else:
            read_http(source, writer, policy.allowed, limits=policy.limits, should_stop=should_stop)
        return writer.digest.hexdigest()

    def _publish(
        self,
        part: str,
        actual: str,
        checked: bool,
        label: str,
        disk_format: str,
        should_stop: Callable[[], bool] | None = None,
    ) -> FetchResult:
        """Rename the complete ``part`` to its digest, or drop it for the entry already there.

        ``checked``: the digest was the spec's, whose lock the caller holds, so
        no entry of that name can exist; otherwise take the digest's lock first.
        """
        if checked:
            os.rename(part, self.entry_path(actual))
            fsync_path(self.base_dir)
            return FetchResult(self.entry_path(actual), True)
        with _flock(self._lock_path(actual)):
            final = self.entry_path(actual)
            if os.path.lexists(final):
                unlink(part)  # same content cached already: that entry is the one
                self._check_cached(label, final, disk_format, should_stop)
                return FetchResult(final, False)
            os.rename(part, final)
            fsync_path(self.base_dir)
            return FetchResult(final, True)

    def _check_format(
        self,
        label: str,
        path: str,
        disk_format: str,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Refuse images whose real format differs from the declared one, or that
        reference other files (a backing or data file could expose host files)."""
        info = qemu_img.info(path, should_stop=should_stop)
        if info.format != disk_format:
            raise ImageUnacceptable(
                f"image {label} is declared {disk_format} but qemu-img detects format {info.format}"
            )
        if info.backing_file:
            raise ImageUnacceptable(
                f"image {label} has a backing file ({info.backing_file}); refusing it"
            )
        if info.data_file:
            raise ImageUnacceptable(
                f"image {label} has an external data file ({info.data_file}); refusing it"
            )

    def _check_cached(
        self,
        label: str,
        final: str,
        disk_format: str,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """A cached entry is used only if it is a plain file and has the declared format.

        Its name is its digest, given only by the rename after hashing and
        fsync, so its content is not hashed again.
        """
        st = os.lstat(final)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(
                f"cache entry {final} for image {label} is not a regular file; refusing it"
            )
        self._check_format(label, final, disk_format, should_stop)

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
                    if unlink(path):
                        removed.append(path)
            except BlockingIOError:
                continue  # a fetch of this image is in progress
        return removed

    def create_instance_disk(
        self,
        base_path: str,
        disk_path: str,
        disk_format: str,
        size_bytes: int | None,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Create ``disk_path`` from the cached ``base_path``; True if this call created it
        (see :func:`spawnflow.virt.instance_disks.create`)."""
        return instance_disks.create(
            base_path, disk_path, disk_format, size_bytes, should_stop=should_stop
        )

    def remove_instance_disk(self, disk_path: str) -> bool:
        """Delete ``disk_path`` and any stale ``.tmp``; True if the disk existed."""
        return instance_disks.remove(disk_path)
