"""History reads on a large log: ``history show`` and ``history list`` at 10k and 1M events.

A SQLite event log is made through ``EventLog.open`` (so the schema is the
migrated one) and filled with bulk inserts of synthetic builds shaped like real
ones (the same event kinds, states and payloads the agent writes: ~57 events
for an ACTIVE build, fewer for a rollback; a fleet-like mix of states, hosts
and failed steps over 90 days). Then the Python API calls behind the CLI are
timed on a 10k-event and a 1M-event log, median of repeated runs after a
warm-up, and the ratio 1M/10k is printed: ~1 means the query does not grow
with the log.

The same queries are then timed again with the indexes proposed for them
(created in the bench database only; the schema is changed through migrations).

    python -m bench.history [--sizes 10000,1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from spawnflow.flows.spawn import step_names
from spawnflow.history import History, retention
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog

SIZES = (10_000, 1_000_000)
STEPS = tuple(step_names())  # the real flow's steps, in its order
HOSTS = tuple(f"cmp-{i:03d}" for i in range(1, 21))
DAYS = 90
# Where a rolled-back build failed, and with what.
FAILURES = (
    ("image", "ImageChecksumMismatch", 0.4),
    ("resume", "VifPlugTimeout", 0.3),
    ("domain_create", "DomainError", 0.2),
    ("volumes", "VolumeError", 0.1),
)
PROPOSED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_events_atom_failures ON events (build_id, name) "
    "WHERE kind = 'atom' AND to_state = 'FAILURE'",
)
DOMAIN_XML = "<domain type='kvm'>" + "<!-- device -->" * 90 + "</domain>"


# -- synthetic builds -----------------------------------------------------------------------


def _failure(kind: str) -> dict[str, Any]:
    return {
        "causes": [],
        "exc_args": ["synthetic"],
        "exc_type_names": [
            f"spawnflow.exceptions.{kind}",
            "spawnflow.exceptions.SpawnflowError",
            "Exception",
        ],
        "exception_str": f"synthetic {kind} for the benchmark",
        "traceback_str": "Traceback..." * 8,
        "version": 2,
    }


class _Writer:
    """Events of one build, in the order and shapes the agent writes them."""

    def __init__(self, build_id: str, start: float, rng: random.Random):
        self.build_id, self.ts, self.rng = build_id, start, rng
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        kind: str,
        subject: str | None,
        name: str | None,
        from_state: str | None,
        to_state: str | None,
        payload: Any,
        dt: float = 0.0005,
    ) -> None:
        self.ts += dt
        self.rows.append(
            {
                "build_id": self.build_id,
                "ts": self.ts,
                "kind": kind,
                "subject": subject,
                "name": name,
                "from_state": from_state,
                "to_state": to_state,
                "payload": payload,
            }
        )


def _pick_failure(rng: random.Random) -> tuple[str, str]:
    pick, acc = rng.random(), 0.0
    for step, error, weight in FAILURES:
        acc += weight
        if pick <= acc:
            return step, error
    return FAILURES[-1][0], FAILURES[-1][1]


def _spec(rng: random.Random, instance: str, name: str) -> dict[str, Any]:
    """A redacted spec as the agent stores it."""
    spec = {
        "instance": {"uuid": instance, "name": name},
        "flavor": {"vcpus": 2, "memory_mb": 2048, "root_gb": 20},
        "image": {
            "source": "https://images.example/cirros.qcow2",
            "checksum": None,
            "disk_format": "qcow2",
            "id": None,
        },
        "vifs": [
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "mac": "fa:16:3e:00:00:01",
                "type": "bridge",
                "bridge": "br-int",
                "mtu": 1450,
                "ips": ["10.0.0.5"],
                "active": False,
            }
        ],
        "volumes": [],
        "power_on": True,
    }
    return spec


def _pick_outcome(rng: random.Random) -> tuple[str, str | None, str | None]:
    """(final state, failing step, error type) in the mix the benchmark models."""
    roll = rng.random()
    if roll < 0.80:
        return "ACTIVE", None, None
    if roll < 0.98:
        fail_at, error = _pick_failure(rng)
        return ("FAILED" if roll > 0.96 else "ROLLED_BACK"), fail_at, error
    return ("RUNNING" if roll < 0.99 else "INTERRUPTED"), None, None


def _forward(
    w: _Writer,
    atoms: dict[str, str],
    spec: dict[str, Any],
    fail_at: str | None,
    error: str | None,
    stop_at: int | None,
) -> list[str]:
    """The steps' forward runs; returns the steps that ran to an end."""
    rng, done = w.rng, []
    for index, step in enumerate(STEPS):
        atom = atoms[step]
        w.add("atom", atom, step, "PENDING", "RUNNING", {"set": {"state": "RUNNING"}})
        w.add("atom", atom, step, "RUNNING", "RUNNING", {"set": {"meta": {"progress": 0.0}}})
        if index == stop_at:
            break
        took = rng.lognormvariate(-4.5, 1.2) * (40 if step in ("image", "resume") else 1)
        if step == fail_at:
            failure = {"set": {"failure": _failure(error or "Error"), "state": "FAILURE"}}
            w.add("atom", atom, step, "RUNNING", "FAILURE", failure, took)
            done.append(step)
            break
        result: Any = {"ok": True}
        if step == "domain_xml":
            result = DOMAIN_XML
        elif step == "vifs":
            result = {
                "expected_events": [spec["vifs"][0]["id"]],
                "plugged": [],
                "waiting_since": w.ts,
            }
        success = {"set": {"results": result, "state": "SUCCESS"}}
        w.add("atom", atom, step, "RUNNING", "SUCCESS", success, took)
        w.add("atom", atom, step, "SUCCESS", "SUCCESS", {"set": {"meta": {"progress": 1.0}}})
        done.append(step)
    return done


def _revert(
    w: _Writer, atoms: dict[str, str], done: list[str], fail_at: str | None, outcome: str
) -> None:
    """The reverts of a failed build; a FAILED one's second revert fails."""
    for step, atom in atoms.items():
        state = "SUCCESS" if step in done[:-1] else ("FAILURE" if step == fail_at else "PENDING")
        w.add("atom", atom, step, state, state, {"set": {"intention": "REVERT"}})
    for position, step in enumerate(reversed(done)):
        atom = atoms[step]
        before = "FAILURE" if step == fail_at else "SUCCESS"
        w.add("atom", atom, step, before, "REVERTING", {"set": {"state": "REVERTING"}})
        if outcome == "FAILED" and position == 1:
            failed = {
                "set": {"revert_failure": _failure("FirewallError"), "state": "REVERT_FAILURE"}
            }
            w.add("atom", atom, step, "REVERTING", "REVERT_FAILURE", failed, 0.01)
            break
        reverted = {"set": {"state": "REVERTED"}}
        w.add("atom", atom, step, "REVERTING", "REVERTED", reverted, 0.002)


def synthetic_build(rng: random.Random, start: float, host: str) -> tuple[dict, list[dict]]:
    """One build: its ``builds`` row and its events."""
    build_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    instance = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    name = f"vm-{instance[:8]}"
    spec = _spec(rng, instance, name)
    w = _Writer(build_id, start, rng)
    w.add("build", build_id, name, None, "QUEUED", {"spec": spec, "host": host}, 0)
    w.add(
        "logbook",
        build_id,
        f"build-{build_id}",
        None,
        None,
        {"set": {"meta": {}, "name": f"build-{build_id}", "uuid": build_id}},
    )
    flow = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    w.add(
        "flow",
        flow,
        "spawn",
        None,
        None,
        {"parent": build_id, "set": {"meta": {}, "name": "spawn", "state": None, "uuid": flow}},
    )
    w.add("build", build_id, name, "QUEUED", "RUNNING", None, 0.03)
    atoms = {step: str(uuid.UUID(int=rng.getrandbits(128), version=4)) for step in STEPS}
    for step, atom in atoms.items():
        w.add(
            "atom",
            atom,
            step,
            None,
            "PENDING",
            {
                "parent": flow,
                "type": "TASK_DETAIL",
                "set": {
                    "failure": None,
                    "intention": "EXECUTE",
                    "meta": {},
                    "name": step,
                    "results": None,
                    "revert_failure": None,
                    "revert_results": None,
                    "state": "PENDING",
                    "uuid": atom,
                    "version": "1.0",
                },
            },
        )
    w.add("flow", flow, "spawn", None, "RUNNING", {"set": {"state": "RUNNING"}})

    outcome, fail_at, error = _pick_outcome(rng)
    stop_at = rng.randrange(len(STEPS)) if outcome in ("RUNNING", "INTERRUPTED") else None

    done = _forward(w, atoms, spec, fail_at, error, stop_at)
    if outcome == "ACTIVE":
        w.add("flow", flow, "spawn", "RUNNING", "SUCCESS", {"set": {"state": "SUCCESS"}})
        w.add("build", build_id, name, "RUNNING", "ACTIVE", None)
    elif outcome in ("ROLLED_BACK", "FAILED"):
        _revert(w, atoms, done, fail_at, outcome)
        w.add(
            "flow",
            flow,
            "spawn",
            "RUNNING",
            "REVERTED" if outcome == "ROLLED_BACK" else "FAILURE",
            {"set": {"state": "REVERTED"}},
        )
        w.add("build", build_id, name, "RUNNING", "REVERTING", None)
        w.add(
            "build",
            build_id,
            name,
            "REVERTING",
            outcome,
            {"error": f"{error}: synthetic {error} for the benchmark"},
        )
    elif outcome == "INTERRUPTED":
        w.add("build", build_id, name, "RUNNING", "INTERRUPTED", None, 30)
    states = [r["to_state"] for r in w.rows if r["kind"] == "build"]
    row = {
        "build_id": build_id,
        "instance_uuid": instance,
        "instance_name": name,
        "host": host,
        "state": states[-1],
        "created_at": start,
        "updated_at": w.rows[-1]["ts"],
        "spec": spec,
        "error": w.rows[-1]["payload"]["error"] if outcome in ("ROLLED_BACK", "FAILED") else None,
        "last_seq": 0,
    }
    return row, w.rows


def fill(url: str, events: int, seed: int = 7) -> dict[str, Any]:
    """Make the database at ``url`` (migrated) and bulk-insert ~``events`` events."""
    EventLog.open(url).close()  # migrations: the schema under test is the real one
    engine = sa.create_engine(url)
    rng = random.Random(seed)
    now = time.time()
    builds_per_event = 1 / 52  # measured mean over the mix below
    count = max(1, int(events * builds_per_event))
    starts = sorted(now - rng.random() * DAYS * 86400 for _ in range(count * 2))
    written, made, ids = 0, 0, []
    batch_rows: list[dict] = []
    batch_events: list[dict] = []

    def flush(conn: sa.Connection) -> None:
        if batch_events:
            conn.execute(sa.insert(t.events), batch_events)
            conn.execute(sa.insert(t.builds), batch_rows)
            batch_events.clear()
            batch_rows.clear()

    with engine.begin() as conn:
        for start in starts:
            if written >= events:
                break
            row, rows = synthetic_build(rng, start, rng.choice(HOSTS))
            rows = rows[: events - written]
            if rows[-1]["kind"] != "build" and row["state"] not in ("RUNNING",):
                row["state"] = "RUNNING"  # cut short by the size limit: still running
                row["error"] = None
            batch_rows.append(row)
            batch_events.extend(rows)
            written += len(rows)
            made += 1
            ids.append(row["build_id"])
            if len(batch_events) >= 20_000:
                flush(conn)
        flush(conn)
        conn.execute(
            sa.text(
                "UPDATE builds SET last_seq = (SELECT max(seq) FROM events "
                "WHERE events.build_id = builds.build_id)"
            )
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return {"events": written, "builds": made, "ids": ids}


# -- timing ---------------------------------------------------------------------------------


def timed(call: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    """Median wall time (ms) of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def queries(
    history: History, info: dict[str, Any], rng: random.Random
) -> Iterator[tuple[str, Callable[[], Any], int]]:
    ids = info["ids"]
    some = [rng.choice(ids) for _ in range(64)]
    cycle = iter(some * 1000)
    page = history.builds(limit=100)  # both sizes have more than 150 builds
    marker = page[-1].build_id if page else None
    yield "show: build(id)", lambda: history.build(next(cycle)), 50
    yield "show: build(8-char prefix)", lambda: history.build(next(cycle)[:8]), 50
    yield "events(id)", lambda: history.events(next(cycle)), 50
    yield "list: first page (50)", lambda: history.builds(limit=50), 30
    yield "list: page after marker", lambda: history.builds(limit=50, marker=marker), 30
    yield "list: --state ROLLED_BACK", lambda: history.builds(state="ROLLED_BACK"), 30
    yield "list: --host cmp-007", lambda: history.builds(host="cmp-007"), 30
    yield "list: --since 7d", lambda: history.builds(since="7d"), 30
    yield "list: --failed-step resume", lambda: history.builds(failed_step="resume"), 20
    yield (
        "list: --instance UUID",
        lambda: history.builds(instance=history.build(some[0]).instance_uuid),
        20,
    )
    yield "stats (all builds)", lambda: history.stats(), 3
    yield "stats --since 1d", lambda: history.stats(since="1d"), 5


def measure(url: str, info: dict[str, Any]) -> dict[str, float]:
    results = {}
    with History.open(url) as history:
        for name, call, runs in queries(history, info, random.Random(11)):
            results[name] = timed(call, runs, warmup=1 if runs <= 5 else 3)
    return results


class _FirstBatchDone(Exception):
    pass


def purge_batch_ms(url: str, batch_size: int = 500) -> tuple[float, int]:
    """One purge batch (one write transaction) of ``batch_size`` finished builds."""
    log = EventLog.open(url, upgrade=False)
    removed = 0

    def stop(count: int) -> None:
        nonlocal removed
        removed = count
        raise _FirstBatchDone

    start = time.perf_counter()
    try:
        retention.purge(log, older_than_days=0, batch_size=batch_size, progress=stop)
    except _FirstBatchDone:
        pass
    finally:
        elapsed = (time.perf_counter() - start) * 1000
        log.close()
    return elapsed, removed


def run(sizes: tuple[int, ...] = SIZES, keep: str | None = None) -> None:
    workdir = keep or tempfile.mkdtemp(prefix="spawnflow-bench-history-")
    os.makedirs(workdir, exist_ok=True)
    measured: dict[int, dict[str, dict[str, float]]] = {}
    try:
        for size in sizes:
            path = os.path.join(workdir, f"history-{size}.sqlite")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            url = f"sqlite:///{path}"
            start = time.perf_counter()
            info = fill(url, size)
            print(
                f"generated {info['events']:,} events, {info['builds']:,} builds in "
                f"{time.perf_counter() - start:.1f}s ({os.path.getsize(path) / 1e6:.0f} MB)",
                flush=True,
            )
            measured[size] = {"as migrated": measure(url, info)}
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                for statement in PROPOSED_INDEXES:
                    conn.exec_driver_sql(statement)
                conn.exec_driver_sql("ANALYZE")
            engine.dispose()
            measured[size]["with proposed indexes"] = measure(url, info)
            copy = os.path.join(workdir, f"purge-{size}.sqlite")
            shutil.copy(path, copy)
            ms, removed = purge_batch_ms(f"sqlite:///{copy}")
            measured[size]["with proposed indexes"]["purge: one batch (<=500 builds)"] = ms
            os.unlink(copy)
            print(f"  purge batch: {removed} builds in {ms:.0f} ms", flush=True)
        report(sizes, measured)
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def report(sizes: tuple[int, ...], measured: dict[int, dict[str, dict[str, float]]]) -> None:
    small, large = sizes[0], sizes[-1]
    for variant in ("as migrated", "with proposed indexes"):
        print(f"\nhistory queries, {variant} (median ms)")
        print(f"{'query':<34}{small:>12,}{large:>14,}{'ratio':>9}")
        for name, value in measured[small][variant].items():
            other = measured[large][variant].get(name)
            if other is None:
                continue
            print(f"{name:<34}{value:>12.2f}{other:>14.2f}{other / value:>9.1f}")
    print("\nproposed indexes:")
    for statement in PROPOSED_INDEXES:
        print(f"  {statement}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="event counts, comma separated (default 10000,1000000)",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the databases in DIR")
    args = parser.parse_args(argv)
    run(tuple(int(s) for s in args.sizes.split(",")), args.keep)


if __name__ == "__main__":
    main()
