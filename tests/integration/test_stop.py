"""Stop means stopped: ``Agent.stop()`` returns only when no thread of the agent still
touches the host or the log, and what a killed agent left half-written goes at the
next start.

On the real parts (qemu:///system, real qemu-img, an HTTP server on loopback):

- a build inside an image fetch that never ends (the source streams forever),
  stopped with no grace at all: stop returns only once the build's thread has
  left the fetch, nothing is written to the log after it returned, a reader in
  the same process reads the build INTERRUPTED, the lease was given back (the
  next agent starts at once, in the same process) and the build then finishes;
- a build whose ``qemu-img convert`` hangs (frozen with SIGSTOP by the test):
  stop ends it, leaves no qemu-img process and no half-made ``disk.tmp``;
- ``spawnflow spawn`` killed -9 while it streams an endless source leaves a
  ``.part`` in ``_base``; the next start removes it (and the fetch never grew it
  past ``[images] max_size_gb``), as it removes a half-made root disk;
- a stalled HTTPS fetch gives way at once (the watchdog shuts down the TLS
  socket, not the plain one TLS detached).
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import spawnflow.conf
from spawnflow import Agent
from spawnflow.exceptions import ImageFetchInterrupted
from spawnflow.persistence import db
from spawnflow.virt.image_fetch import FetchLimits
from spawnflow.virt.images import ImageCache
from tests.helpers import history_of, leaks, make_spec
from tests.integration.test_image_fetch import Server, cache_for
from tests.unit.test_stop_host_calls import gone, qemu_img_children

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Source:
    """An image server on loopback: the first ``endless`` GETs of a path stream zeros
    forever (no Content-Length); later ones serve ``body``."""

    def __init__(self, body: bytes, endless: int = 1) -> None:
        self.gets = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                owner.gets += 1
                self.send_response(200)
                if owner.gets > endless:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()
                chunk = b"\0" * (256 * 1024)
                try:
                    while True:
                        self.wfile.write(chunk)
                except OSError:
                    pass  # the fetch went away

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
def source(qcow2_image: Path) -> Iterator[Source]:
    server = Source(qcow2_image.read_bytes())
    yield server
    server.close()


def agent_threads(before: set[threading.Thread]) -> list[str]:
    """Threads of an agent started after ``before`` that are still alive."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t not in before and t.is_alive() and t.name.startswith("spawnflow")
    )


def last_seq(conf) -> int:
    engine = db.read_engine(spawnflow.conf.database_url(conf))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("select max(seq) from events")).scalar_one())
    finally:
        engine.dispose()


def part_files(conf) -> dict[str, int]:
    base = Path(conf.state_path) / "instances" / "_base"
    if not base.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in base.iterdir() if p.name.endswith(".part")}


def part_files_of(cache: ImageCache) -> list[str]:
    return [n for n in os.listdir(cache.base_dir) if n.endswith(".part")]


def interrupted_reason(conf, build_id: str) -> str:
    build = history_of(conf, build_id)
    assert build.state == "INTERRUPTED", build.state
    return str(build.lifecycle[-1].detail)


def test_stop_waits_for_a_build_in_an_endless_fetch_then_the_next_start_finishes_it(
    real_conf, tmp_path, qcow2_image, source, cleanup
):
    conf = real_conf(images={"allowed_sources": f"{tmp_path},{source.base}/"})
    spec = dict(
        make_spec(qcow2_image), image={"source": source.base + "/image", "disk_format": "qcow2"}
    )
    cleanup.append(spec["instance"]["uuid"])
    before = set(threading.enumerate())
    agent = Agent(conf)
    agent.start()
    build_id = agent.start_build(spec)
    wait_for(lambda: sum(part_files(conf).values()) > 4 * MiB, "the endless fetch")

    agent.stop(timeout=0)  # no grace: whatever runs must be interrupted

    assert agent_threads(before) == [], "a thread of the agent outlived stop()"
    assert part_files(conf) == {}
    seq = last_seq(conf)
    time.sleep(0.5)
    assert last_seq(conf) == seq, "the log was written after stop() returned"
    # A reader in the same process: the build is INTERRUPTED inside the image step.
    assert "during step image" in interrupted_reason(conf, build_id)

    # The lease was given back: the next agent starts at once, here, and resumes
    # the build (the source now serves the image).
    with Agent(conf) as again:
        assert again.recovered[build_id].action == "resume"
        assert again.wait(build_id, timeout=120).state == "ACTIVE"


def test_stop_ends_a_hung_qemu_img_and_leaves_no_process_and_no_partial_disk(
    real_conf, tmp_path, cleanup
):
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(96 * MiB))  # real data: the copy takes a while
    conf = real_conf()
    spec = dict(make_spec(base), image={"source": str(base), "disk_format": "raw"})
    cleanup.append(spec["instance"]["uuid"])
    frozen: list[int] = []
    done = threading.Event()

    def freeze_the_copy() -> None:  # a qemu-img hung on a dead disk, as seen from here
        while not done.is_set() and not frozen:
            for pid, argv in qemu_img_children().items():
                if " convert " in argv:
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
                    return
            time.sleep(0.001)

    freezer = threading.Thread(target=freeze_the_copy)
    freezer.start()
    before = set(threading.enumerate())
    agent = Agent(conf)
    try:
        agent.start()
        build_id = agent.start_build(spec)
        wait_for(lambda: bool(frozen), "qemu-img convert")
        agent.stop(timeout=0)
    finally:
        done.set()
        freezer.join()
        for pid in frozen:  # never leave a stopped process behind, whatever happened
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert agent_threads(before) == []
    assert gone(frozen[0]) and qemu_img_children() == {}
    instance_dir = Path(conf.state_path) / "instances" / spec["instance"]["uuid"]
    assert not (instance_dir / "disk.tmp").exists()
    assert not (instance_dir / "disk").exists()
    assert "during step image" in interrupted_reason(conf, build_id)


def test_spawn_killed_while_streaming_leaves_a_part_that_the_next_start_removes(
    real_conf, tmp_path, qcow2_image, source, libvirt_conn
):
    limit = 32 * MiB
    conf = real_conf(
        images={"allowed_sources": f"{tmp_path},{source.base}/", "max_size_gb": limit / 1024**3},
        recovery={"policy": "rollback"},
    )
    spec = dict(
        make_spec(qcow2_image), image={"source": source.base + "/image", "disk_format": "qcow2"}
    )
    spec_path = tmp_path / "vm.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    spawn = subprocess.Popen(
        [sys.executable, "-m", "spawnflow.cmd.main"]
        + ["--config-file", str(tmp_path / "spawnflow.conf"), "spawn", str(spec_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: sum(part_files(conf).values()) > 2 * MiB, "the endless fetch")
    finally:
        spawn.kill()  # kill -9: no stop, no cleanup
        spawn.wait()
    left = part_files(conf)
    assert len(left) == 1 and max(left.values()) <= limit
    # A half-made root disk of an instance nobody builds any more goes too.
    orphan = Path(conf.state_path) / "instances" / "0b7d3e52-95a4-4c8e-8f0e-1f4a6b9c2d10"
    orphan.mkdir()
    (orphan / "disk.tmp").write_bytes(b"half a copy")

    with Agent(conf) as agent:
        assert part_files(conf) == {}
        assert not (orphan / "disk.tmp").exists()
        (build_id,) = agent.recovered
        assert agent.wait(build_id, timeout=60).state == "ROLLED_BACK"
    instances = Path(conf.state_path) / "instances"
    assert leaks(libvirt_conn, spec["instance"]["uuid"], instances) == []


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for IP 127.0.0.1 (cert file, key file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_a_stalled_https_fetch_gives_way_at_once(tmp_path, certificate):
    """TLS wraps the socket the watchdog was handed (detaching it): the watchdog must
    shut down the TLS one, or a stalled read waits out the socket timeout."""
    server = Server(tls=certificate)
    try:
        cache = cache_for(
            tmp_path,
            server.base + "/",
            limits=FetchLimits(stall_timeout=20, retries=0, ca_file=certificate[0]),
        )
        asked: list[float] = []

        def should_stop() -> bool:
            if server.gets.get("/stall") and not asked:
                time.sleep(0.3)  # let the read block first
                asked.append(time.monotonic())
            return bool(asked)

        with pytest.raises(ImageFetchInterrupted, match="/stall"):
            cache.fetch(server.base + "/stall", None, "raw", should_stop=should_stop)
        assert time.monotonic() - asked[0] < 10  # generous; the read timeout is 25 s
        assert part_files_of(cache) == []
    finally:
        server.close()
