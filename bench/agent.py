"""The agent at scale on libvirt's test:///default driver.

1. Throughput: N builds through one agent (max_concurrent_builds threads);
   checks none is lost or duplicated; compared with the same spawn flow run
   once per build on TaskFlow's in-memory backend, in this process, this run.
2. Recovery: N builds left RUNNING by a "crash", with a small and a large
   event log already there (filler events of old builds); time from
   ``Agent.start()`` to every build resumed (RUNNING again) and to every build
   ACTIVE, and the ratio large/small.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
import sqlalchemy as sa
import taskflow.engines
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models

import spawnflow.conf
from spawnflow import Agent
from spawnflow.engine.agent import queue_build
from spawnflow.flows.context import BuildContext
from spawnflow.flows.spawn import build_spawn_flow
from spawnflow.flows.spec import parse_spec
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.firewall.noop import NoopFirewall
from spawnflow.virt.host import Host
from spawnflow.virt.images import CachePolicy, ImageCache


def make_conf(root: Path, workers: int = 10):
    path = root / "bench.conf"
    path.write_text(
        f"[DEFAULT]\nstate_path = {root}/state\nhost = bench\n"
        f"max_concurrent_builds = {workers}\n"
        "[libvirt]\nconnection_uri = test:///default\nvirt_type = test\n"
        "[firewall]\ndriver = noop\n[recovery]\npolicy = resume\n"
        f"[images]\nallowed_sources = {root}\n"
    )
    return spawnflow.conf.load(["--config-file", str(path)])


def make_image(root: Path) -> Path:
    image = root / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    return image


def spec_for(image: Path) -> dict:
    return {
        "instance": {"uuid": str(uuid.uuid4()), "name": "bench"},
        "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
        "image": {"source": str(image), "id": "bench-image", "disk_format": "qcow2"},
    }


def clear_test_driver() -> None:
    conn = libvirt.open("test:///default")
    for dom in conn.listAllDomains():
        if dom.name().startswith("instance-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


class NoEvents:
    """The baseline has no event log: nothing to wait for, nothing cancelled."""

    def wait(self, build_id: str, tags: list[str], deadline: float) -> dict[str, str]:
        return {}

    def checkpoint(self, build_id: str) -> None:
        pass


def in_memory_per_build(conf, image: Path, runs: int = 20) -> float:
    """Seconds per build of the same spawn flow on TaskFlow's in-memory backend."""
    host = Host("test:///default", "test")
    instances = Path(conf.state_path) / "mem-instances"
    images = ImageCache(
        str(instances / "_base"),
        str(Path(conf.state_path) / "mem-locks"),
        CachePolicy.from_conf(conf),
    )
    times = []
    for _ in range(runs):
        spec = parse_spec(spec_for(image))
        ctx = BuildContext(
            build_id=str(uuid.uuid4()),
            spec=spec,
            conf=conf,
            host=host,
            images=images,
            firewall=NoopFirewall(),
            events=NoEvents(),
            instances_path=str(instances),
        )
        backend = tf_backends.fetch({"connection": "memory://"})
        book = models.LogBook("m")
        detail = models.FlowDetail("spawn", uuid=str(uuid.uuid4()))
        book.add(detail)
        backend.get_connection().save_logbook(book)
        start = time.perf_counter()
        taskflow.engines.load(
            build_spawn_flow(ctx), flow_detail=detail, book=book, backend=backend, engine="serial"
        ).run()
        times.append(time.perf_counter() - start)
    host.close()
    return statistics.median(times)


def throughput(builds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sf-bench-agent-") as tmp:
        root = Path(tmp)
        conf = make_conf(root)
        image = make_image(root)
        baseline = in_memory_per_build(conf, image)
        clear_test_driver()
        with Agent(conf) as agent:
            start = time.perf_counter()
            ids = [agent.start_build(spec_for(image)) for _ in range(builds)]
            outcomes = [agent.wait(i) for i in ids]
            wall = time.perf_counter() - start
            # test:///default forgets its domains when its last connection closes.
            domains = {
                d.UUIDString()
                for d in agent.host.conn.listAllDomains()
                if d.name().startswith("instance-")
            }
        states = {o.state for o in outcomes}
        per_build = wall / builds
        print(
            f"throughput: {builds} builds, {conf.max_concurrent_builds} workers, "
            f"{wall:.1f}s wall, {builds / wall:.1f} builds/s; states {sorted(states)}; "
            f"{len(set(ids))} build ids, {len(domains)} distinct domains "
            f"(lost {builds - len(domains)}, duplicated {len(ids) - len(set(ids))})"
        )
        print(
            f"  per build: ours {per_build * 1000:.1f} ms vs in-memory TaskFlow "
            f"{baseline * 1000:.1f} ms -> {per_build / baseline:.2f}x"
        )


def pad_log(url: str, events: int) -> None:
    """Fill the log with finished builds' events, as a long-lived host has."""
    log = EventLog.open(url)
    batch = 10_000
    with log.engine.begin() as conn:
        for offset in range(0, events, batch):
            rows = [
                {
                    "build_id": f"old-{(offset + i) // 60}",
                    "ts": 1.0,
                    "kind": "atom",
                    "subject": "x",
                    "name": "image",
                    "from_state": "RUNNING",
                    "to_state": "SUCCESS",
                    "payload": {"set": {"results": None}},
                }
                for i in range(min(batch, events - offset))
            ]
            conn.execute(sa.insert(t.events), rows)
    # A long-lived host checkpointed its WAL long ago; do not bill that to recovery.
    raw = log.engine.raw_connection()
    raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    log.close()


def recovery(builds: int, filler: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sf-bench-recovery-") as tmp:
        root = Path(tmp)
        conf = make_conf(root)
        image = make_image(root)
        url = spawnflow.conf.database_url(conf)
        pad_log(url, filler)
        log = EventLog.open(url)
        backend = EventLogBackend(eventlog=log)
        ids = []
        for _ in range(builds):
            build_id, _ = queue_build(log, backend, parse_spec(spec_for(image)), "bench")
            log.transition_build(build_id, lifecycle.RUNNING)  # then the agent "died"
            ids.append(build_id)
        log.close()
        clear_test_driver()
        start = time.perf_counter()
        agent = Agent(conf)
        agent.start()
        resumed = time.perf_counter() - start  # every decision taken and submitted
        for build_id in ids:
            agent.wait(build_id)
        finished = time.perf_counter() - start
        states = {agent.wait(i).state for i in ids}
        agent.stop()
        clear_test_driver()
        assert states == {"ACTIVE"}, states
        return resumed, finished


def main(builds: int = 1000) -> None:
    builds = int(os.environ.get("SPAWNFLOW_BENCH_BUILDS", builds))
    throughput(builds)
    small = recovery(builds, 10_000)
    large = recovery(builds, 1_000_000)
    print(f"recovery of {builds} interrupted builds:")
    print(f"  10k events in log: all resumed in {small[0]:.2f}s, all ACTIVE in {small[1]:.1f}s")
    print(f"  1M events in log:  all resumed in {large[0]:.2f}s, all ACTIVE in {large[1]:.1f}s")
    print(f"  ratio 1M/10k: resumed {large[0] / small[0]:.2f}x, ACTIVE {large[1] / small[1]:.2f}x")
