"""What the fleet test asserts after its run: the log, the side effects and the leases agree.

Read after every agent stopped. The log is read in bulk (one query per
table), the side effects from the files tests/integration/fleet_launcher.py
wrote per host, and the clients' own records from their result files.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from taskflow import states as tf

from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from tests.integration.event_order import check_build_events
from tests.integration.fleet_launcher import EFFECTS, STEP_OF

# Effects of a step's run (the others are of its revert).
FORWARD = ("disk", "define", "start")


@dataclass
class Interruptions:
    """What the INTERRUPTED events of one build caught: (step, RUNNING|REVERTING) -> times."""

    caught: Counter[tuple[str, str]] = field(default_factory=Counter)
    count: int = 0


def interruptions(events: list[Any]) -> Interruptions:
    """Fold one build's events: at each INTERRUPTED, which steps were running or reverting."""
    found = Interruptions()
    atoms: dict[str, str] = {}
    for event in events:
        if event.kind == "atom":
            atoms[event.name] = event.to_state
        elif event.kind == "build" and event.to_state == lifecycle.INTERRUPTED:
            found.count += 1
            for name, state in atoms.items():
                if state in (tf.RUNNING, tf.REVERTING):
                    found.caught[(name, state)] += 1
    return found


def read_effects(paths: dict[str, Path]) -> dict[str, Counter[str]]:
    """Per build, how many times each effect happened; every line on its file's host."""
    per_build: dict[str, Counter[str]] = defaultdict(Counter)
    for host, path in paths.items():
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line_host, _instance, build, effect = line.split()
            assert line_host == host, line
            assert effect in EFFECTS, line
            per_build[build][effect] += 1
            per_build[build]["host:" + line_host] += 1
    return per_build


def check_effects(
    build: Any, effects: Counter[str], caught: Interruptions, killed_hosts: set[str]
) -> None:
    """Each side effect of ``build`` ran once, on its own host; a step that an
    interruption caught may have run once more per interruption (its effect
    may then be missing too, when the kill came before its line was written,
    or the re-run found it made: an adopted disk)."""
    hosts = {key[5:] for key in effects if key.startswith("host:")}
    assert hosts <= {build.host}, (build.build_id, build.host, hosts)
    for effect in EFFECTS:
        state = tf.RUNNING if effect in FORWARD else tf.REVERTING
        repeats = caught.caught[(STEP_OF[effect], state)]
        ran = effects[effect]
        assert ran <= 1 + repeats, (build.build_id, effect, ran, caught.caught)
        if build.state == lifecycle.ACTIVE and effect in FORWARD and not repeats:
            assert ran == 1, (build.build_id, effect, ran, caught.caught)
        if build.state == lifecycle.ACTIVE and effect not in FORWARD:
            assert ran == 0, (build.build_id, effect, ran)
    if build.state != lifecycle.ACTIVE:
        # Only a kill takes domains away (the database's restart holds builds
        # and recovers them in place): rolled back only if a kill caught it.
        assert caught.count and build.host in killed_hosts, (build.build_id, build.state)


def load_log(engine: sa.Engine) -> tuple[list[Any], dict[str, list[Any]], list[Any]]:
    """(build rows, events per build in seq order, the agents' lease events)."""
    with engine.connect() as conn:
        builds = list(conn.execute(sa.select(t.builds)))
        per_build: dict[str, list[Any]] = defaultdict(list)
        query = sa.select(t.events).where(t.events.c.build_id.is_not(None)).order_by(t.events.c.seq)
        for event in conn.execute(query):
            per_build[event.build_id].append(event)
        leases = list(
            conn.execute(
                sa.select(t.events)
                .where(t.events.c.build_id.is_(None), t.events.c.kind == "agent")
                .order_by(t.events.c.seq)
            )
        )
    return builds, per_build, leases


def check_builds(builds: list[Any], posted: list[dict[str, Any]]) -> Counter[str]:
    """Every posted build in the log, on its host; exactly one ACTIVE per instance;
    nothing in the log that no client posted. Returns the states' counts."""
    by_id = {row.build_id: row for row in builds}
    placed = {b: entry for entry in posted for b in entry["builds"]}
    lost, unknown = set(placed) - set(by_id), set(by_id) - set(placed)
    assert not lost and not unknown, f"lost {sorted(lost)[:5]}, unknown {sorted(unknown)[:5]}"
    active: Counter[str] = Counter()
    for build_id, row in by_id.items():
        entry = placed[build_id]
        assert row.instance_uuid == entry["instance"], row
        assert row.host == entry["host"], (row.build_id, row.host, entry["host"])
        assert row.state in (lifecycle.ACTIVE, lifecycle.ROLLED_BACK), (row.build_id, row.state)
        active[row.instance_uuid] += row.state == lifecycle.ACTIVE
    for entry in posted:
        assert entry["state"] == lifecycle.ACTIVE, entry
        assert active[entry["instance"]] == 1, entry
        assert by_id[entry["builds"][-1]].state == lifecycle.ACTIVE, entry
    return Counter(row.state for row in builds)


def check_leases(leases: list[Any], hosts: list[str], starts: Counter[str]) -> None:
    """Per host: one STARTED per agent start, epochs 1, 2, ... in order; a restart after
    a kill takes over from the killed agent (which never said STOPPED); every
    agent still running at the end stopped cleanly (STOPPED, the last event)."""
    per_host: dict[str, list[Any]] = defaultdict(list)
    for event in leases:
        per_host[event.name].append(event)
    assert set(per_host) == set(hosts), sorted(per_host)
    for host, events in per_host.items():
        started = [e for e in events if e.to_state == "STARTED"]
        assert len(started) == starts[host], (host, [e.to_state for e in events])
        assert [e.payload["epoch"] for e in started] == list(range(1, starts[host] + 1)), host
        for before, after in itertools.pairwise(started):
            assert after.payload["took_over_from"] == before.subject, host
        stopped = [e for e in events if e.to_state == "STOPPED"]
        assert [e.subject for e in stopped] == [started[-1].subject], (host, stopped)
        assert events[-1].to_state == "STOPPED", host


def check_fleet(
    engine: sa.Engine,
    posted: list[dict[str, Any]],
    effect_files: dict[str, Path],
    starts: Counter[str],
    killed_hosts: set[str],
) -> dict[str, int]:
    """Every check above; the run's counts for the report."""
    builds, events, leases = load_log(engine)
    states = check_builds(builds, posted)
    effects = read_effects(effect_files)
    assert set(effects) <= {row.build_id for row in builds}, "an effect of an unknown build"
    interrupted = 0
    for row in builds:
        check_build_events(events[row.build_id])
        caught = interruptions(events[row.build_id])
        interrupted += bool(caught.count)
        check_effects(row, effects[row.build_id], caught, killed_hosts)
    check_leases(leases, sorted(effect_files), starts)
    totals: Counter[str] = Counter()
    for counts in effects.values():
        totals.update({k: v for k, v in counts.items() if k in EFFECTS})
    return {
        "instances": len(posted),
        "builds": len(builds),
        "active": states[lifecycle.ACTIVE],
        "rolled_back": states[lifecycle.ROLLED_BACK],
        "reposts": sum(len(entry["builds"]) - 1 for entry in posted),
        "interrupted": interrupted,
        **{f"effect_{k}": totals[k] for k in EFFECTS},
    }
