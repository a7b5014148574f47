"""Fuzz ``history import``: real exports, mutated at random, into a database with other builds.

Every import either succeeds, and then every build of the target still reads
(list, show, events, stats, diagnose, the CLI's views, a fresh export), the
other builds' rows are exactly as they were and the projections are what the
events say; or it is refused with one line, and the target's files are byte
for byte what they were.
"""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spawnflow.cmd.render.build import step_full_rows, step_rows, summary
from spawnflow.cmd.render.events import payload_summary
from spawnflow.exceptions import PersistenceError
from spawnflow.history import DuplicateBuild, History, InvalidExport, export, import_document
from spawnflow.persistence import lifecycle, replay
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import new_build, run_build
from tests.unit.test_history_diagnose import rollback_flow, snapshot_while
from tests.unit.test_history_export import fingerprint

TABLES = ("builds", "events", "logbooks", "flowdetails", "atomdetails")
# What a terminal or a database may choke on, beside ordinary text.
TEXT = [
    "\x1b]0;pwned\x07",
    "\x9b31m",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\x00",
    "\n",
    "é",
    "💥",
    "'; drop table builds; --",
]
HOSTILE = [*TEXT, "\ud800"]  # a lone surrogate is not UTF-8: never stored


def _exported(url: str, build_id: str) -> dict[str, Any]:
    with History.open(url) as history:
        return json.loads(export.dumps(history.export(build_id)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Export documents of a few real builds, and a target that holds other builds."""
    tmp = tmp_path_factory.mktemp("fuzz")
    source = f"sqlite:///{tmp}/source.sqlite"
    log = EventLog.open(source)
    try:
        ids = [
            run_build(log),
            run_build(log, fail_at="image"),
            run_build(log, fail_at="vifs", revert_fail_at="image"),
            new_build(log),
        ]
        interrupted, crashed = snapshot_while(log, source, tmp, "firewall")
    finally:
        log.close()
    log = EventLog.open(crashed)
    try:
        log.transition_build(interrupted, lifecycle.INTERRUPTED)
        log.record_external_event(interrupted, "network-vif-plugged", "port-1", "completed")
        rollback_flow(log, interrupted, "[recovery] policy = rollback")
    finally:
        log.close()
    docs = [_exported(source, b) for b in ids] + [_exported(crashed, interrupted)]
    target = tmp / "target.sqlite"
    url = f"sqlite:///{target}"
    log = EventLog.open(url)
    try:
        run_build(log), run_build(log, fail_at="firewall"), new_build(log)
    finally:
        log.close()
    import_document(url, docs[0])  # one of the documents is already there
    with sqlite3.connect(target) as db:
        taken = [
            row[0]
            for table, column in (
                ("builds", "build_id"),
                ("flowdetails", "uuid"),
                ("atomdetails", "uuid"),
            )
            for row in db.execute(f"select {column} from {table}")
        ]
    db.close()
    return Corpus(docs=docs, target=target, taken=taken, tmp=tmp)


class Corpus(dict):
    def __repr__(self) -> str:  # hypothesis prints its arguments on a failure
        return "corpus"


def dump(path: Path) -> dict[str, set[tuple]]:
    """Every row of every table, as stored."""
    db = sqlite3.connect(path)
    try:
        return {table: set(db.execute(f"select * from {table}")) for table in TABLES}
    finally:
        db.close()


# -- mutations ------------------------------------------------------------------------------


def paths(doc: Any) -> list[tuple]:
    out, stack = [], [((), doc)]
    while stack:
        path, value = stack.pop()
        out.append(path)
        if isinstance(value, dict):
            stack.extend((path + (k,), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((path + (i,), v) for i, v in enumerate(value))
    return sorted(out, key=repr)


def at(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def nested(depth: int) -> Any:
    value: Any = {}
    for n in range(depth):
        value = [value] if n % 2 else {"x": value}
    return value


def values(ids: list[str]) -> st.SearchStrategy:
    """Values of every JSON type (and a few that are not), hostile text, others' ids."""
    text = st.lists(st.one_of(st.characters(), st.sampled_from(HOSTILE)), max_size=6).map("".join)
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.sampled_from([1e12, -1.0, 0.0, 946684799.0, 253402300800.0]),
        text,
        st.sampled_from(ids),
        st.sampled_from(sorted(lifecycle.STATES | {"PENDING"})),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(text, st.integers(), max_size=2),
        st.integers(50, 300).map(nested),
        st.just(float("nan")),
        st.just({1: 2}),
    )


def mutate(data: st.DataObject, doc: dict, ids: list[str], benign: bool) -> dict:
    """One random change of ``doc`` (in place); returns the (possibly new) document.

    ``benign``: only changes of what steps and specs said (payload values import
    leaves alone), so that many documents import and their reads are exercised.
    """
    op = _draw_op(data, benign)
    events = doc.get("events") if isinstance(doc.get("events"), list) else []
    if op == "rename":  # one id replaced everywhere: a consistent forgery
        return _rename(data, doc, ids)
    if op in ("time", "seq", "reorder") and events:
        return _mutate_event(data, doc, events, op)
    return _mutate_value(data, doc, ids, events, op, benign)


def _draw_op(data: st.DataObject, benign: bool) -> str:
    op: str = (
        "payload"
        if benign
        else data.draw(
            st.sampled_from(
                [
                    "drop",
                    "retype",
                    "retype",
                    "id",
                    "rename",
                    "time",
                    "seq",
                    "reorder",
                    "text",
                    "payload",
                ]
            ),
            label="op",
        )
    )
    return op


def _rename(data: st.DataObject, doc: dict, ids: list[str]) -> dict:
    text = json.dumps(doc)
    own = sorted(
        {s for s in (at(doc, p) for p in paths(doc)) if isinstance(s, str) and _is_uuid(s)}
    )
    if own:
        old = data.draw(st.sampled_from(own), label="old id")
        new = data.draw(st.sampled_from(ids + own), label="new id")
        return json.loads(text.replace(old, new))
    return doc


def _mutate_event(data: st.DataObject, doc: dict, events: list, op: str) -> dict:
    i = data.draw(st.integers(0, len(events) - 1), label="event")
    if not isinstance(events[i], dict):
        return doc
    if op == "time":
        events[i]["ts"] = data.draw(
            st.one_of(
                st.sampled_from([1e12, -1e12, 1e300, float("inf"), float("nan"), True, "now"]),
                st.floats(),
            ),
            label="ts",
        )
    elif op == "seq" and i > 0 and isinstance(events[i - 1], dict):
        events[i]["seq"] = events[i - 1].get("seq")
    elif op == "reorder":
        j = data.draw(st.integers(0, len(events) - 1), label="other event")
        how = data.draw(st.sampled_from(["swap", "drop", "duplicate"]), label="how")
        if how == "swap":
            events[i], events[j] = events[j], events[i]
        elif how == "drop":
            del events[i]
        else:
            events.insert(j, copy.deepcopy(events[i]))
    return doc


def _mutate_value(
    data: st.DataObject, doc: dict, ids: list[str], events: list, op: str, benign: bool
) -> dict:
    candidates = [p for p in paths(doc) if p]
    if events and data.draw(st.integers(0, 4), label="within one event") > 0:
        # Uniform over the events (sampled_from favours the first candidates).
        i = data.draw(st.integers(0, len(events) - 1), label="event")
        candidates = [p for p in candidates if p[:2] == ("events", i) and len(p) > 2] or candidates
    if op == "id":
        candidates = [
            p for p in candidates if isinstance(at(doc, p), str) and _is_uuid(at(doc, p))
        ] or candidates
    if op == "text":
        candidates = [p for p in candidates if isinstance(at(doc, p), str)] or candidates
    if op == "payload":  # inside what a step or a spec said: imports, then must read
        candidates = [p for p in candidates if _free(p)] or candidates
    path = data.draw(st.sampled_from(candidates), label="path")
    parent, key = at(doc, path[:-1]), path[-1]
    if op == "drop":
        del parent[key]
    elif op in ("text", "payload") and data.draw(st.booleans(), label="hostile text"):
        parent[key] = str(parent[key]) + data.draw(st.sampled_from(HOSTILE), label="text")
    elif op == "id":
        parent[key] = data.draw(st.sampled_from(ids), label="id")
    elif benign:
        parent[key] = data.draw(
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from(TEXT),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(TEXT), inner, max_size=3)
                ),
                max_leaves=6,
            ),
            label="JSON value",
        )
    else:
        parent[key] = data.draw(values(ids), label="value")
    return doc


def _free(path: tuple) -> bool:
    """A place in a payload whose value import leaves to the step or spec that wrote it."""
    if len(path) < 5 or path[0] != "events" or path[2] != "payload":
        return False
    if path[3] == "spec":
        return path[4] != "instance"
    return path[3] == "set" and (
        path[4] in ("results", "revert_results") or (path[4] == "meta" and len(path) > 5)
    )


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# -- the property ---------------------------------------------------------------------------


def _copies(corpus: dict[str, Any]) -> Iterator[Path]:
    n = 0
    while True:
        n += 1
        folder = corpus["tmp"] / f"example-{n}"
        folder.mkdir()
        target = folder / "target.sqlite"
        shutil.copyfile(corpus["target"], target)
        yield target


def everything_reads(url: str) -> None:
    """Every build of the database reads, shows, diagnoses, renders and exports."""
    with History.open(url) as history:
        builds = history.builds(limit=None)
        history.stats()
        for row in builds:
            build = history.build(row.build_id)
            build.diagnose(
                vif_plugging_timeout=300,
                recovery_policy="auto",
                resume_window=600,
                lease_seconds=30,
            )
            summary(build, 80), step_rows(build, 80), step_full_rows(build)
            for event in history.events(row.build_id):
                payload_summary(event)
            export.check_document(json.loads(export.dumps(history.export(row.build_id))))
    log = EventLog.open(url)
    try:
        assert replay.replay(log) == replay.current(log)
    finally:
        log.close()


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_exports_import_cleanly_or_change_nothing(corpus, data):
    copies = corpus.setdefault("copies", _copies(corpus))
    target = next(copies)
    url = f"sqlite:///{target}"
    index = data.draw(st.integers(0, len(corpus["docs"]) - 1), label="document")
    doc = copy.deepcopy(corpus["docs"][index])
    benign = data.draw(st.booleans(), label="benign")
    for _ in range(data.draw(st.integers(0 if benign else 1, 3), label="mutations")):
        doc = mutate(data, doc, corpus["taken"], benign)
    allow_unfinished = data.draw(st.booleans(), label="allow_unfinished")
    try:
        _import_once(url, doc, allow_unfinished)
    finally:
        shutil.rmtree(target.parent)


# The column naming the build that owns a row, per table.
OWNER = {"builds": 0, "events": 1, "logbooks": 0, "flowdetails": 1, "atomdetails": 2}


def _import_once(url: str, doc: dict, allow_unfinished: bool) -> None:
    target = Path(url.removeprefix("sqlite:///"))
    disk, rows = fingerprint(url), dump(target)
    try:
        build_id = import_document(url, doc, allow_unfinished=allow_unfinished)
    except (InvalidExport, DuplicateBuild) as exc:
        event(f"refused: {type(exc).__name__}")  # --hypothesis-show-statistics
        assert "\n" not in str(exc), str(exc)
        assert fingerprint(url) == disk
        return
    except PersistenceError as exc:
        assert "not finished" in str(exc) and not allow_unfinished, str(exc)
        assert fingerprint(url) == disk
        return
    event("imported")
    after = dump(target)
    for table in TABLES:
        assert rows[table] <= after[table], f"{table}: a row of another build changed"
        added = after[table] - rows[table]
        assert all(row[OWNER[table]] == build_id for row in added), table
        assert added or table not in ("builds", "events"), table
    everything_reads(url)
