"""``local`` volumes: a file or block device already present on this host.

Nothing is attached or logged in on the host: the path was provisioned by
someone else (an operator, a storage agent) and outlives the instance, so
``disconnect`` has nothing to undo and must never remove it.

The disk format is found by reading the volume's first bytes. That is a known
hazard (a guest that writes a qcow2 header into a raw volume would have it
read as qcow2 on the next attach), so a qcow2 header that names a backing file
or an external data file is refused: either would let the image make qemu open
another host file.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from spawnflow.exceptions import VolumeError
from spawnflow.virt import hostpaths
from spawnflow.virt.volumes.base import (
    Connection,
    VolumeConnector,
    VolumePolicy,
    VolumeSpec,
    require,
)

LUKS_MAGIC = b"LUKS\xba\xbe"
QCOW2_MAGIC = b"QFI\xfb"

# qcow2 header (big-endian): magic, version, backing_file_offset at byte 8;
# incompatible_features (version 3+) at byte 72, bit 2 = external data file.
_QCOW2_HEADER_LEN = 80
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2

OPTION = "[volumes] allowed_paths"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class LocalPath:
    """A local volume path the policy allows: resolved, with what allowed it."""

    path: str  # links followed, '..' collapsed: what qemu is given
    kind: str  # 'file' | 'block'
    directory: str | None  # the allowed directory holding a file (None for a device)


def is_glob(entry: str) -> bool:
    """Whether an ``allowed_paths`` entry is a block-device glob rather than a directory."""
    return any(c in _GLOB_CHARS for c in entry)


def _allowed_text(policy: VolumePolicy) -> str:
    return ", ".join(policy.allowed_paths) if policy.allowed_paths else "empty: no local volumes"


def check_local_path(path: str, policy: VolumePolicy) -> LocalPath:
    """What ``path`` names, if ``policy`` lets a volume reach it; else ``VolumeError``.

    The order matters: the forbidden paths and the allow list are checked on
    the resolved path before the file is even looked at, so a refusal never
    tells the caller whether a path outside the list exists. Nothing is
    opened here (a FIFO or a tape device must not be touched); the type comes
    from ``lstat`` of the resolved path. The message names the value, what it
    resolves to and the option that would allow it; it has no volume prefix,
    so the spec check and the connector can each add their own.
    """
    real = hostpaths.resolve(path)
    shown = repr(path) if real == path else f"{path!r} (resolves to {real!r})"
    for label, forbidden in policy.forbidden:
        if hostpaths.is_within(real, forbidden):
            raise VolumeError(
                f"{shown} is inside {label} ({forbidden}), which a volume "
                f"may never reach, whatever {OPTION} says"
            )
    directories = [e for e in policy.allowed_paths if not is_glob(e)]
    globs = [e for e in policy.allowed_paths if is_glob(e)]
    directory = hostpaths.containing_dir(real, directories)
    pattern = hostpaths.matches_glob(real, globs)
    if directory is None and pattern is None:
        raise VolumeError(f"{shown} is outside {OPTION} ({_allowed_text(policy)})")
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        raise VolumeError(f"{shown} does not exist") from None
    except OSError as exc:
        raise VolumeError(f"cannot stat {shown}: {exc.strerror}") from None
    if stat.S_ISREG(info.st_mode) and directory is not None:
        _check_unchangeable(shown, real)
        return LocalPath(real, "file", directory)
    if stat.S_ISBLK(info.st_mode) and pattern is not None:
        in_use = block_device_in_use(info.st_rdev)
        if in_use:
            raise VolumeError(
                f"{shown} is a block device {in_use}; a guest must never "
                "get a device the host is using, whatever "
                f"{OPTION} says"
            )
        return LocalPath(real, "block", None)
    raise VolumeError(_wrong_kind(shown, info.st_mode, pattern))


def _check_unchangeable(shown: str, real: str) -> None:
    """QEMU opens the path itself, later: nobody but root may be able to swap the
    file for a link between this check and that open."""
    unsafe = hostpaths.changeable_by_others(os.path.dirname(real))
    if unsafe is not None:
        raise VolumeError(
            f"{shown} lies below {unsafe!r}, which a user other than root can "
            f"change (owner or write bits); a directory of {OPTION} must be "
            "root's all the way down"
        )


def _wrong_kind(shown: str, mode: int, pattern: str | None) -> str:
    """Why a path of the wrong kind for the entry it matched is refused."""
    if stat.S_ISREG(mode):
        return (
            f"{shown} is a regular file, but matches only the block-device "
            f"glob {pattern!r}; a file must lie inside a directory listed "
            f"in {OPTION}"
        )
    if stat.S_ISBLK(mode):
        return (
            f"{shown} is a block device, but block devices must match a "
            f"glob in {OPTION} (a listed directory allows regular files only)"
        )
    return f"{shown} is {_kind(mode)}; a local volume must be a regular file or a block device"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def block_device_in_use(rdev: int) -> str | None:
    """How the host uses block device ``rdev`` (or a device built on it), else None.

    A device is in use when it, one of its partitions, or a device stacked on
    it (device-mapper, md: its sysfs ``holders``) holds a mounted file system
    or active swap. The event log, state_path and the root file system all
    live on such devices, so a glob like ``/dev/sd*`` must not hand them to a
    guest read-write.
    """
    mounted = _mounted_devices()
    for dev in _stacked_on(rdev):
        if dev in mounted:
            return (
                f"holding {mounted[dev]}"
                if dev == rdev
                else f"under {os.major(dev)}:{os.minor(dev)}, which holds {mounted[dev]}"
            )
    return None


def _mounted_devices() -> dict[int, str]:
    """dev_t of every mounted file system and active swap device -> what it is."""
    found: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                major, minor = fields[2].split(":")
                found.setdefault(
                    os.makedev(int(major), int(minor)), f"the file system mounted on {fields[4]}"
                )
    except OSError:
        pass
    try:
        with open("/proc/swaps", encoding="utf-8", errors="replace") as f:
            for line in f.readlines()[1:]:
                name = line.split()[0]
                try:
                    info = os.stat(name)
                except OSError:
                    continue
                if stat.S_ISBLK(info.st_mode):
                    found.setdefault(info.st_rdev, f"active swap {name}")
    except OSError:
        pass
    return found


def _stacked_on(rdev: int, depth: int = 0) -> set[int]:
    """``rdev``, its partitions and every device stacked on them (sysfs holders)."""
    found = {rdev}
    sysdir = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    if depth > 16 or not os.path.isdir(sysdir):
        return found
    sysdir = os.path.realpath(sysdir)
    names = []
    try:
        # Partitions are subdirectories with a 'partition' file.
        names += [
            os.path.join(sysdir, e)
            for e in os.listdir(sysdir)
            if os.path.exists(os.path.join(sysdir, e, "partition"))
        ]
        holders = os.path.join(sysdir, "holders")
        if os.path.isdir(holders):
            names += [os.path.realpath(os.path.join(holders, e)) for e in os.listdir(holders)]
    except OSError:
        return found
    for name in names:
        try:
            with open(os.path.join(name, "dev"), encoding="ascii") as f:
                major, minor = f.read().strip().split(":")
        except (OSError, ValueError):
            continue
        found |= _stacked_on(os.makedev(int(major), int(minor)), depth + 1)
    return found


class LocalConnector(VolumeConnector):
    """A volume that is a path on this host (regular file or block device).

    ``connect`` checks the path against the policy again (the spec check ran
    earlier, maybe in another process) and hands qemu the resolved path, so a
    link swapped afterwards does not change what the guest gets.
    """

    def connect(self, volume: VolumeSpec) -> Connection:
        require(volume, "path")
        path = volume.path or ""  # set and non-empty: require() refused it otherwise
        if not os.path.isabs(path):
            raise VolumeError(f"volume {volume.id}: path {path!r} is not absolute")
        try:
            local = check_local_path(path, self.policy)
        except VolumeError as exc:
            raise VolumeError(f"volume {volume.id}: path {exc}") from None
        if local.kind == "block" or local.directory is None:
            # A block device (check_local_path gives a directory to files
            # only) is presented raw; any LUKS on it is handled by the
            # <encryption> element, not by the driver format.
            source_type, driver_format = "block", "raw"
        else:
            source_type = "file"
            driver_format = detect_format(volume.id, local.path, local.directory)
        return Connection(
            volume_id=volume.id,
            driver=volume.driver,
            source_type=source_type,
            path=local.path,
            protocol=None,
            name=None,
            hosts=[],
            driver_format=driver_format,
        )

    def disconnect(self, volume: VolumeSpec, connection: Connection | None) -> None:
        # connect() changed nothing on the host, and the file or device is not
        # ours to delete: it belongs to whoever provisioned the volume.
        return None


def detect_format(volume_id: str, path: str, directory: str) -> str:
    """'qcow2' or 'raw' for the regular file at ``path`` (inside ``directory``), from its header.

    The file is opened with ``hostpaths.open_beneath``: no link is followed
    and anything but a regular file (a FIFO planted since the check) is
    refused without blocking. qemu's native LUKS is presented as format raw
    plus ``<encryption format='luks'>``, so a LUKS header also means 'raw'.
    """
    try:
        fd = hostpaths.open_beneath(directory, path)
    except OSError as exc:
        raise VolumeError(
            f"volume {volume_id}: cannot open {path!r}: {exc.strerror or exc}"
        ) from exc
    try:
        header = os.pread(fd, _QCOW2_HEADER_LEN, 0)
    except OSError as exc:
        raise VolumeError(f"volume {volume_id}: cannot read {path!r}: {exc}") from exc
    finally:
        os.close(fd)
    if header.startswith(LUKS_MAGIC):
        return "raw"
    if not header.startswith(QCOW2_MAGIC):
        return "raw"
    _check_qcow2_header(volume_id, path, header)
    return "qcow2"


def _check_qcow2_header(volume_id: str, path: str, header: bytes) -> None:
    if len(header) < 16:
        raise VolumeError(f"volume {volume_id}: {path!r} has a truncated qcow2 header")
    version, backing_offset = struct.unpack(">IQ", header[4:16])
    if backing_offset:
        raise VolumeError(
            f"volume {volume_id}: qcow2 image {path!r} has a backing file; "
            "local volumes must be self-contained"
        )
    if version >= 3 and len(header) >= _QCOW2_HEADER_LEN:
        (incompatible,) = struct.unpack(">Q", header[72:80])
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise VolumeError(
                f"volume {volume_id}: qcow2 image {path!r} has an external data file; "
                "local volumes must be self-contained"
            )
