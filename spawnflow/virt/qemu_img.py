"""Typed wrappers over the ``qemu-img`` command line.

Every call runs ``qemu-img`` with an argument list (never through a shell) and
turns a failure into :class:`~spawnflow.exceptions.HostError` carrying
qemu-img's own stderr, which is what an operator needs to act on.

Paths are made absolute before they reach qemu-img: a relative name such as
``nbd:host:10809`` or ``json:{...}`` would otherwise be parsed as a protocol
rather than a file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from spawnflow.exceptions import HostError, ImageError

QEMU_IMG = "qemu-img"

# ``qemu-img info`` parses untrusted image headers; like nova, cap its address
# space and CPU time so a crafted image cannot exhaust the host (CVE-2015-5162).
# Applied through util-linux prlimit(1) when present, since preexec_fn is not
# thread-safe.
_INFO_LIMITS = ("--as=1073741824", "--cpu=30")

# Wall-clock cap for any qemu-img call; a copy of a large image can be slow, so
# this is generous and only guards against a hung process.
_TIMEOUT = 3600.0

_PBKDF_FLAKE = "Unable to get accurate CPU usage"
_LUKS_ATTEMPTS = 10


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` reports about one image (not its backing chain)."""

    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None
    data_file: str | None
    encrypted: bool
    backing_format: str | None = None


def _run(
    args: list[str], target: str, *, limits: tuple[str, ...] = (), timeout: float = _TIMEOUT
) -> str:
    """Run qemu-img with ``args`` on ``target``; return stdout, raise HostError on failure."""
    argv = [QEMU_IMG, *args]
    prlimit = shutil.which("prlimit") if limits else None
    if prlimit:
        argv = [prlimit, *limits, *argv]
    try:
        # S603: an argument list, no shell; paths are ours (cache, instance dir)
        # or were checked against the operator's allow lists before any step ran.
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except FileNotFoundError as exc:
        raise HostError(f"{QEMU_IMG} is not installed or not on PATH: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"{QEMU_IMG} {args[0]} timed out after {timeout}s on {target}") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        raise HostError(f"{QEMU_IMG} {args[0]} failed on {target}: {err}")
    return proc.stdout


def _opt(value: str) -> str:
    """Escape a value for qemu's ``key=value,...`` option syntax (',' is doubled)."""
    return value.replace(",", ",,")


def info(path: str) -> ImageInfo:
    """Probe ``path`` with ``qemu-img info``; works on images in use (``-U``).

    The format is detected, not assumed, so callers can compare it with what
    the image was declared to be.
    """
    out = _run(
        ["info", "-U", "--output=json", os.path.abspath(path)],
        path,
        limits=_INFO_LIMITS,
        timeout=60,
    )
    try:
        data = json.loads(out)
        specific = (data.get("format-specific") or {}).get("data") or {}
        return ImageInfo(
            format=data["format"],
            virtual_size=int(data["virtual-size"]),
            actual_size=data.get("actual-size"),
            backing_file=data.get("backing-filename"),
            data_file=specific.get("data-file"),
            encrypted=bool(data.get("encrypted", False)),
            backing_format=data.get("backing-filename-format"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HostError(f"cannot parse qemu-img info output for {path}: {exc}") from exc


def create(path: str, fmt: str, size_bytes: int) -> None:
    """Create an empty image of ``fmt`` with ``size_bytes`` virtual size."""
    _run(["create", "-q", "-f", fmt, os.path.abspath(path), str(int(size_bytes))], path)


def create_overlay(path: str, backing_file: str, backing_format: str) -> None:
    """Create a qcow2 overlay of ``backing_file``.

    The backing format is always recorded (``-F``) so qemu never probes the
    base image's format at boot, and the backing path is stored absolute.
    """
    _run(
        [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            backing_format,
            "-b",
            os.path.abspath(backing_file),
            os.path.abspath(path),
        ],
        path,
    )


def resize(path: str, size_bytes: int, fmt: str) -> None:
    """Grow ``path`` to ``size_bytes``; equal size is a no-op, shrinking is refused."""
    current = info(path).virtual_size
    if size_bytes < current:
        raise ImageError(
            f"refusing to shrink {path} from {current} to {size_bytes} bytes; "
            "shrinking would destroy guest data"
        )
    if size_bytes == current:
        return
    _run(["resize", "-q", "-f", fmt, os.path.abspath(path), str(int(size_bytes))], path)


def convert(src: str, dst: str, src_fmt: str, dst_fmt: str) -> None:
    """Copy ``src`` into a new image ``dst``; zero areas stay sparse."""
    _run(
        [
            "convert",
            "-q",
            "-f",
            src_fmt,
            "-O",
            dst_fmt,
            os.path.abspath(src),
            os.path.abspath(dst),
        ],
        dst,
    )


def copy_raw(src: str, dst: str) -> None:
    """Sparse copy of a raw image."""
    convert(src, dst, "raw", "raw")


def create_luks(
    path: str, size_bytes: int, passphrase_file: str, *, iter_time_ms: int | None = None
) -> None:
    """Create a LUKS volume keyed by the passphrase stored in ``passphrase_file``.

    The passphrase is read by qemu-img from the file, so it never appears on a
    command line (visible to every user via ``ps``). ``iter_time_ms`` lowers
    the PBKDF time (qemu's default is 2000 ms); only tests should need it.
    """
    options = "key-secret=sec0"
    if iter_time_ms is not None:
        options += f",iter-time={int(iter_time_ms)}"
    args = [
        "create",
        "-q",
        "-f",
        "luks",
        "--object",
        f"secret,id=sec0,file={_opt(os.path.abspath(passphrase_file))}",
        "-o",
        options,
        os.path.abspath(path),
        str(int(size_bytes)),
    ]
    for attempt in range(_LUKS_ATTEMPTS):
        try:
            _run(args, path)
            return
        except HostError as exc:
            # QEMU's PBKDF benchmark can spuriously fail on fast CPUs when
            # getrusage() has not yet accounted the first short round (fixed
            # upstream in 2025, still shipped by distributions); it is transient.
            if _PBKDF_FLAKE not in str(exc) or attempt == _LUKS_ATTEMPTS - 1:
                raise
