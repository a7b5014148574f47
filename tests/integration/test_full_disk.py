"""A full disk under a real build: held (not corrupted, not FAILED), then converged.

The state path (the SQLite event log and the instances, with the image cache)
is a 64 MiB ext4 loop-mounted for the test, filled from a progress callback
at a chosen moment of a real spawn on qemu:///system. While it is full the
log refuses the build's writes (SQLite: "database or disk is full"), so the
build is held; the log file stays intact (``PRAGMA integrity_check``); a new
build is refused for lack of space ([DEFAULT] min_free_disk_mb). Once the
filler is removed the build converges: ACTIVE, or ROLLED_BACK with nothing
left on the host when a step itself met ENOSPC.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import spawnflow.conf
from spawnflow import Agent
from spawnflow.exceptions import HostError
from spawnflow.history import log_wait
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.images import ImageCache
from tests.helpers import history_of, leaks, make_spec
from tests.integration.event_order import check_build_events
from tests.integration.small_fs import fill, mounted_ext4

pytestmark = pytest.mark.integration

MIN_FREE_MB = 8  # the 64 MiB filesystem has ~54 free before the fill, none after


@pytest.fixture
def state_fs(tmp_path: Path):
    """tmp_path/state (real_conf's state_path) on its own small filesystem."""
    with mounted_ext4(tmp_path / "state") as path:
        yield path


class Filler:
    """Fills the filesystem when the build's ``step`` reaches ``state`` (once)."""

    def __init__(self, directory: Path, step: str, state: str):
        self.directory = directory
        self.when = (step, state)
        self.filler: Path | None = None
        self.filled = threading.Event()

    def progress(self, _build_id: str, step: str, state: str, _elapsed: float) -> None:
        if (step, state) == self.when and not self.filled.is_set():
            self.filler = fill(self.directory)
            self.filled.set()

    def remove(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)


def _conf(real_conf):
    return real_conf(
        DEFAULT={"min_free_disk_mb": MIN_FREE_MB},
        # The image cache keeps 1 GiB free by default: more than this filesystem has.
        images={"reserved_disk_mb": 1},
        database={"retry_interval": 0.2, "max_retry_interval": 1.0, "max_retries": 300},
    )


def _db_file(conf) -> str:
    return spawnflow.conf.database_url(conf).split("///", 1)[1].split("?")[0]


def _integrity(path: str) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _wait_held(agent: Agent, build_id: str) -> None:
    """Until the log holds the build's writes (or the build is already final)."""
    log = agent.eventlog
    assert log is not None
    deadline = time.monotonic() + 60
    while log.held(build_id) is None:
        assert time.monotonic() < deadline, "the build was never held"
        time.sleep(0.05)


def _while_full(agent: Agent, conf, build_id: str, other: dict) -> None:
    """The log is intact, the build neither final nor FAILED, a new build refused."""
    assert _integrity(_db_file(conf)) == "ok"
    assert not lifecycle.is_final(history_of(conf, build_id).state)
    # The agent says what it waits for, though the disk has no room left.
    deadline = time.monotonic() + 30
    wait = None
    while wait is None and time.monotonic() < deadline:
        wait = log_wait(str(conf.state_path), conf.host, build_id)
        time.sleep(0.1)
    assert wait is not None and "full" in wait.error, wait
    with pytest.raises(HostError, match="min_free_disk_mb") as refused:
        agent.start_build(other)
    assert str(conf.state_path) in str(refused.value) or "instances" in str(refused.value)


def _after(conf, build_id: str, other: dict, libvirt_conn) -> list[str]:
    """Checks common to both outcomes; returns the build's log-fault reasons."""
    assert _integrity(_db_file(conf)) == "ok"
    with EventLog.open(spawnflow.conf.database_url(conf)) as log:
        faults = check_build_events(log.events(build_id))
        # The refused build left nothing: no row, nothing on the host.
        assert log.builds(instance_uuid=other["instance"]["uuid"]) == []
    instances = Path(spawnflow.conf.instances_path(conf))
    assert leaks(libvirt_conn, other["instance"]["uuid"], instances) == []
    return faults


def test_full_disk_holds_the_build_until_space_is_back(
    state_fs, real_conf, qcow2_image, libvirt_conn, cleanup
):
    conf = _conf(real_conf)
    spec, other = make_spec(qcow2_image), make_spec(qcow2_image)
    cleanup.append(spec["instance"]["uuid"])
    # After the image step the instance disk exists; the next durable write
    # (the volumes step going RUNNING) finds the disk full.
    filler = Filler(state_fs, "image", "SUCCESS")
    with Agent(conf, progress=filler.progress) as agent:
        try:
            build_id = agent.start_build(spec)
            assert filler.filled.wait(60), "the image step never finished"
            _wait_held(agent, build_id)
            _while_full(agent, conf, build_id, other)
        finally:
            filler.remove()
        outcome = agent.wait(build_id, timeout=120)
        assert agent.failed is None, agent.failed
    assert (outcome.state, outcome.error) == (lifecycle.ACTIVE, None)
    dom = libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"])
    assert dom.isActive()
    faults = _after(conf, build_id, other, libvirt_conn)
    assert any("disk is full" in reason for reason in faults), faults
    assert not any(step.state == "FAILURE" for step in history_of(conf, build_id).steps)


def _cache_image(conf, spec: dict) -> None:
    """Put the spec's image in the host's image cache, as an earlier build would have."""
    source = Path(spec["image"]["source"])
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    spec["image"]["checksum"] = f"sha256:{digest}"
    ImageCache.from_conf(conf).fetch(str(source), digest, spec["image"]["disk_format"])


@pytest.mark.parametrize("cached", [False, True], ids=["fetch", "instance-disk"])
def test_enospc_inside_a_step_rolls_back_with_zero_leaks(
    state_fs, real_conf, qcow2_image, libvirt_conn, cleanup, cached
):
    """Filled once the image step's RUNNING is committed: the step itself runs out of
    space, fetching into the image cache or (the image cached already) making the
    instance directory and disk."""
    conf = _conf(real_conf)
    spec, other = make_spec(qcow2_image), make_spec(qcow2_image)
    cleanup.append(spec["instance"]["uuid"])
    if cached:
        _cache_image(conf, spec)
    filler = Filler(state_fs, "image", "RUNNING")
    with Agent(conf, progress=filler.progress) as agent:
        try:
            build_id = agent.start_build(spec)
            assert filler.filled.wait(60), "the image step never started"
            _wait_held(agent, build_id)
            _while_full(agent, conf, build_id, other)
        finally:
            filler.remove()
        outcome = agent.wait(build_id, timeout=120)
        assert agent.failed is None, agent.failed
    assert outcome.state == lifecycle.ROLLED_BACK, outcome
    assert "No space left" in str(outcome.error), outcome.error
    instances = Path(spawnflow.conf.instances_path(conf))
    assert leaks(libvirt_conn, spec["instance"]["uuid"], instances) == []
    # Nothing half-made either: no staging directory, no partial cache entry.
    assert [p.name for p in instances.iterdir() if p.name != "_base"] == []
    base = instances / "_base"
    cache = sorted(p.name for p in base.iterdir()) if base.exists() else []
    assert cache == ([spec["image"]["checksum"].split(":")[1]] if cached else []), cache
    _after(conf, build_id, other, libvirt_conn)
