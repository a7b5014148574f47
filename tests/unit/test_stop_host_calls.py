"""Every blocking host call of the image step gives way when asked to stop.

Real qemu-img, real files, a real HTTP server on loopback that streams
forever: a stopping agent (or a cancel) must end qemu-img and leave no process
behind, must end a fetch even while its stop check fails, and a fetch must
never grow its ``.part`` past ``[images] max_size_gb``. Half-made root disks
(``disk.tmp``) that a killed agent left are found and removed.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawnflow.exceptions import HostCallInterrupted, ImageFetchInterrupted, ImageUnacceptable
from spawnflow.virt import instance_disks, qemu_img
from spawnflow.virt.image_fetch import FetchLimits
from spawnflow.virt.image_sources import AllowedSources
from spawnflow.virt.images import CachePolicy, ImageCache

MiB = 1024 * 1024


def qemu_img_children() -> dict[int, str]:
    """pid -> command line of every qemu-img this process started (any thread)."""
    found: dict[int, str] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"qemu-img") for arg in argv):
                found[int(pid)] = b" ".join(argv).decode(errors="replace")
    return found


def gone(pid: int) -> bool:
    """No such process any more (a zombie counts as alive: it was not reaped)."""
    return not Path(f"/proc/{pid}").exists()


class StopWhenRunning:
    """A ``should_stop`` that turns True once a qemu-img running ``word`` is seen."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: set[int] = set()

    def __call__(self) -> bool:
        running = {pid for pid, argv in qemu_img_children().items() if self.word in argv}
        self.seen |= running
        return bool(running)


def test_a_long_qemu_img_is_ended_and_reaped_when_asked_to_stop(tmp_path):
    key = tmp_path / "key"
    key.write_text("passphrase")
    stop = StopWhenRunning("luks")
    started = time.monotonic()
    with pytest.raises(HostCallInterrupted, match="agent is stopping"):
        # A PBKDF told to take a minute: qemu-img runs until it is ended.
        qemu_img.create_luks(
            str(tmp_path / "vol.luks"), 16 * MiB, str(key), iter_time_ms=60_000, should_stop=stop
        )
    assert time.monotonic() - started < 30  # a generous bound: it would run for minutes
    assert stop.seen and all(gone(pid) for pid in stop.seen)
    assert qemu_img_children() == {}


def test_an_interrupted_disk_copy_leaves_no_disk_and_no_partial_file(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(64 * MiB))  # real data: the copy takes a moment
    disk = tmp_path / "inst" / "disk"
    disk.parent.mkdir()
    stop = StopWhenRunning("convert")
    with pytest.raises(HostCallInterrupted):
        instance_disks.create(str(base), str(disk), "raw", None, should_stop=stop)
    assert stop.seen and all(gone(pid) for pid in stop.seen)
    assert sorted(os.listdir(disk.parent)) == []  # neither disk nor disk.tmp


def test_a_qemu_img_is_not_started_once_stop_was_asked(tmp_path):
    with pytest.raises(HostCallInterrupted, match="not started"):
        qemu_img.create(str(tmp_path / "d.qcow2"), "qcow2", MiB, should_stop=lambda: True)
    assert not (tmp_path / "d.qcow2").exists()


# --- fetch -------------------------------------------------------------------


class EndlessServer:
    """Streams zeros forever on every path (no Content-Length: the body never ends),
    ``pause`` seconds between chunks of 256 KiB."""

    def __init__(self) -> None:
        self.pause = 0.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                chunk = b"\0" * (256 * 1024)
                try:
                    while True:
                        self.wfile.write(chunk)
                        time.sleep(owner.pause)
                except OSError:
                    pass  # the client went away

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endless() -> Iterator[EndlessServer]:
    server = EndlessServer()
    yield server
    server.close()


def endless_cache(tmp_path: Path, server: EndlessServer, max_bytes: int) -> ImageCache:
    return ImageCache(
        str(tmp_path / "_base"),
        str(tmp_path / "locks"),
        CachePolicy(
            allowed=AllowedSources([server.base + "/"]),
            limits=FetchLimits(stall_timeout=30, retries=0),
            max_bytes=max_bytes,
            reserved_bytes=0,
        ),
    )


def part_files(cache: ImageCache) -> list[str]:
    if not os.path.isdir(cache.base_dir):
        return []
    return [n for n in os.listdir(cache.base_dir) if n.endswith(".part")]


def test_a_fetch_stops_even_while_its_stop_check_fails(tmp_path, endless):
    """The check reads the event log; a moment of 'database is locked' there must not
    end the watchdog, or the fetch could never be stopped again (it would stream on
    until max_size_gb)."""
    endless.pause = 0.01  # about 25 MiB/s: the limit below is seconds away
    cache = endless_cache(tmp_path, endless, max_bytes=64 * MiB)
    calls: list[float] = []

    def should_stop() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return True

    # Without a watchdog the fetch would end only at max_size (ImageUnacceptable).
    with pytest.raises(ImageFetchInterrupted):
        cache.fetch(endless.base + "/zero", None, "raw", should_stop=should_stop)
    assert len(calls) > 1
    assert part_files(cache) == []


def test_an_endless_source_is_cut_at_max_size(tmp_path, endless):
    limit = 2 * MiB
    cache = endless_cache(tmp_path, endless, max_bytes=limit)
    sizes: list[int] = []
    done = threading.Event()

    def watch_part() -> None:  # the .part, seen from outside while it grows
        while not done.is_set():
            for name in part_files(cache):
                with contextlib.suppress(FileNotFoundError):
                    sizes.append(os.path.getsize(os.path.join(cache.base_dir, name)))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_part)
    watcher.start()
    try:
        with pytest.raises(ImageUnacceptable, match=r"at least \d+ bytes, more than"):
            cache.fetch(endless.base + "/zero", None, "raw")
    finally:
        done.set()
        watcher.join()
    assert max(sizes, default=0) <= limit
    assert part_files(cache) == []


# --- half-made root disks ----------------------------------------------------


def test_partial_root_disks_are_found_and_removed(tmp_path):
    instances = tmp_path / "instances"
    ours = instances / "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01"
    other = instances / "0b7d3e52-95a4-4c8e-8f0e-1f4a6b9c2d10"
    for directory in (ours, other, instances / "_base", instances / "notes"):
        directory.mkdir(parents=True)
    (ours / "disk.tmp").write_bytes(b"half a copy")
    (ours / "disk").write_bytes(b"a whole disk")
    (instances / "notes" / "disk.tmp").write_bytes(b"not an instance directory")
    (other / "disk.tmp").symlink_to(ours / "disk")  # a link is never followed or removed
    assert instance_disks.clean_partial(str(instances)) == [str(ours / "disk.tmp")]
    assert sorted(os.listdir(ours)) == ["disk"]
    assert (instances / "notes" / "disk.tmp").exists()
    assert os.path.islink(other / "disk.tmp") and (ours / "disk").exists()
    assert instance_disks.clean_partial(str(tmp_path / "missing")) == []
