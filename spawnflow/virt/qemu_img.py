"""Typed wrappers over the ``qemu-img`` command line.

Every call runs ``qemu-img`` with an argument list (never through a shell) and
turns a failure into :class:`~spawnflow.exceptions.HostError` carrying
qemu-img's own stderr, which is what an operator needs to act on.

Paths are made absolute before they reach qemu-img: a relative name such as
``nbd:host:10809`` or ``json:{...}`` would otherwise be parsed as a protocol
rather than a file.

Every call takes an optional ``should_stop`` (the build's cancel/stop check):
a copy of a large image can take minutes, and an agent that stops must not
return while a qemu-img it started still writes, nor leave one running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from spawnflow.exceptions import HostCallInterrupted, HostError, ImageError

QEMU_IMG = "qemu-img"

# ``qemu-img info`` parses untrusted image headers; like nova, cap its address
# space and CPU time so a crafted image cannot exhaust the host (CVE-2015-5162).
# Applied through util-linux prlimit(1) when present, since preexec_fn is not
# thread-safe.
_INFO_LIMITS = ("--as=1073741824", "--cpu=30")

# Wall-clock cap for any qemu-img call; a copy of a large image can be slow, so
# this is generous and only guards against a hung process.
_TIMEOUT = 3600.0

# How often a running qemu-img's caller asks whether to stop, and how long
# qemu-img then gets to exit on SIGTERM before SIGKILL.
_POLL = 0.1
_KILL_GRACE = 5.0
_STOPPED = "the build was cancelled or the agent is stopping"

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
    args: list[str],
    target: str,
    *,
    limits: tuple[str, ...] = (),
    timeout: float = _TIMEOUT,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """Run qemu-img with ``args`` on ``target``; return stdout, raise HostError on failure.

    ``should_stop`` is polled every ``_POLL`` seconds while qemu-img runs (and
    once before it starts): when it returns True, qemu-img is ended (SIGTERM to
    its process group, SIGKILL after ``_KILL_GRACE`` s), reaped, and
    :class:`~spawnflow.exceptions.HostCallInterrupted` is raised, so a stopping
    agent never leaves a qemu-img running behind it. The same happens at
    ``timeout``, raised as a HostError.
    """
    if should_stop is not None and should_stop():
        raise HostCallInterrupted(f"{QEMU_IMG} {args[0]} on {target} not started: {_STOPPED}")
    argv = [QEMU_IMG, *args]
    prlimit = shutil.which("prlimit") if limits else None
    if prlimit:
        argv = [prlimit, *limits, *argv]
    try:
        # S603: an argument list, no shell; paths are ours (cache, instance dir)
        # or were checked against the operator's allow lists before any step ran.
        # A session of its own: ending it ends anything qemu-img started too.
        proc = subprocess.Popen(  # noqa: S603
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise HostError(f"{QEMU_IMG} is not installed or not on PATH: {exc}") from exc
    out, err = _wait(proc, args[0], target, timeout, should_stop)
    if proc.returncode != 0:
        detail = err.strip() or out.strip() or f"exit status {proc.returncode}"
        raise HostError(f"{QEMU_IMG} {args[0]} failed on {target}: {detail}")
    return out


def _wait(
    proc: subprocess.Popen[str],
    what: str,
    target: str,
    timeout: float,
    should_stop: Callable[[], bool] | None,
) -> tuple[str, str]:
    """Collect ``proc``'s output until it exits; end it on ``should_stop`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return proc.communicate(timeout=_POLL)
            except subprocess.TimeoutExpired:
                pass
            if should_stop is not None and should_stop():
                _end(proc)
                raise HostCallInterrupted(f"{QEMU_IMG} {what} on {target} ended: {_STOPPED}")
            if time.monotonic() > deadline:
                _end(proc)
                raise HostError(f"{QEMU_IMG} {what} timed out after {timeout}s on {target}")
    except BaseException:
        _end(proc)  # whatever ended the wait (even a KeyboardInterrupt): no orphan
        raise


def _end(proc: subprocess.Popen[str]) -> None:
    """End ``proc`` and its process group and reap it: SIGTERM (with SIGCONT, so a
    stopped one gets it), then SIGKILL after ``_KILL_GRACE`` seconds."""
    if proc.returncode is not None:
        return
    for signum in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)
    try:
        proc.communicate(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _opt(value: str) -> str:
    """Escape a value for qemu's ``key=value,...`` option syntax (',' is doubled)."""
    return value.replace(",", ",,")


def info(path: str, *, should_stop: Callable[[], bool] | None = None) -> ImageInfo:
    """Probe ``path`` with ``qemu-img info``; works on images in use (``-U``).

    The format is detected, not assumed, so callers can compare it with what
    the image was declared to be.
    """
    out = _run(
        ["info", "-U", "--output=json", os.path.abspath(path)],
        path,
        limits=_INFO_LIMITS,
        timeout=60,
        should_stop=should_stop,
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


def create(
    path: str, fmt: str, size_bytes: int, *, should_stop: Callable[[], bool] | None = None
) -> None:
    """Create an empty image of ``fmt`` with ``size_bytes`` virtual size."""
    _run(
        ["create", "-q", "-f", fmt, os.path.abspath(path), str(int(size_bytes))],
        path,
        should_stop=should_stop,
    )


def create_overlay(
    path: str,
    backing_file: str,
    backing_format: str,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> None:
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
        should_stop=should_stop,
    )


def resize(
    path: str, size_bytes: int, fmt: str, *, should_stop: Callable[[], bool] | None = None
) -> None:
    """Grow ``path`` to ``size_bytes``; equal size is a no-op, shrinking is refused."""
    current = info(path, should_stop=should_stop).virtual_size
    if size_bytes < current:
        raise ImageError(
            f"refusing to shrink {path} from {current} to {size_bytes} bytes; "
            "shrinking would destroy guest data"
        )
    if size_bytes == current:
        return
    _run(
        ["resize", "-q", "-f", fmt, os.path.abspath(path), str(int(size_bytes))],
        path,
        should_stop=should_stop,
    )


def convert(
    src: str,
    dst: str,
    src_fmt: str,
    dst_fmt: str,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> None:
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
        should_stop=should_stop,
    )


def copy_raw(src: str, dst: str, *, should_stop: Callable[[], bool] | None = None) -> None:
    """Sparse copy of a raw image."""
    convert(src, dst, "raw", "raw", should_stop=should_stop)


def create_luks(
    path: str,
    size_bytes: int,
    passphrase_file: str,
    *,
    iter_time_ms: int | None = None,
    should_stop: Callable[[], bool] | None = None,
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
            _run(args, path, should_stop=should_stop)
            return
        except HostError as exc:
            # QEMU's PBKDF benchmark can spuriously fail on fast CPUs when
            # getrusage() has not yet accounted the first short round (fixed
            # upstream in 2025, still shipped by distributions); it is transient.
            if _PBKDF_FLAKE not in str(exc) or attempt == _LUKS_ATTEMPTS - 1:
                raise
