"""Export a build's history as JSON, import it elsewhere: same history, refusals are clear."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, SchemaError
from spawnflow.history import DuplicateBuild, History, InvalidExport, export, import_document
from spawnflow.persistence import db, lifecycle, replay
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import new_build, run_build


@pytest.fixture
def source(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/source.sqlite"


@pytest.fixture
def target(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/target.sqlite"


def make_builds(url: str) -> dict[str, str]:
    log = EventLog.open(url)
    try:
        return {
            "active": run_build(log),
            "rolled_back": run_build(log, fail_at="image"),
            "failed": run_build(log, fail_at="vifs", revert_fail_at="image"),
            "queued": new_build(log),
        }
    finally:
        log.close()


def exported(url: str, build_id: str) -> dict:
    with History.open(url) as history:
        doc = history.export(build_id)
    return json.loads(export.dumps(doc))  # through JSON, as a file would carry it


def row_of(url: str, build_id: str) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = (
            conn.execute(sa.text("select * from builds where build_id = :b"), {"b": build_id})
            .mappings()
            .one()
        )
    engine.dispose()
    return dict(row)


def test_document_is_self_contained(source):
    ids = make_builds(source)
    doc = exported(source, ids["rolled_back"])
    assert (doc["format"], doc["version"]) == ("spawnflow-build-history", 1)
    assert doc["schema_revision"] == db.head_revision()
    assert doc["build"]["build_id"] == ids["rolled_back"]
    assert doc["build"]["state"] == "ROLLED_BACK"
    assert doc["events"][0]["kind"] == "build" and doc["events"][0]["to_state"] == "QUEUED"
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == sorted(seqs)


@pytest.mark.parametrize("which", ["active", "rolled_back", "failed"])
def test_import_replays_the_same_history_and_builds_row(source, target, which):
    ids = make_builds(source)
    build_id = ids[which]
    # The target already has other builds: sequence numbers are new there.
    make_builds(target)
    assert import_document(target, exported(source, build_id)) == build_id
    with History.open(source) as a, History.open(target) as b:
        before, after = a.build(build_id), b.build(build_id)
        assert [
            (e.kind, e.name, e.from_state, e.to_state, e.at, e.payload) for e in a.events(build_id)
        ] == [
            (e.kind, e.name, e.from_state, e.to_state, e.at, e.payload) for e in b.events(build_id)
        ]
    assert after == before
    old, new = row_of(source, build_id), row_of(target, build_id)
    new.pop("last_seq"), old.pop("last_seq")  # sequence numbers are the target's own
    assert new == old
    # Every projection of the target is what its events say (replay == projection).
    log = EventLog.open(target)
    try:
        assert replay.replay(log) == replay.current(log)
    finally:
        log.close()


def test_import_into_an_empty_database_creates_it(source, target, tmp_path):
    build_id = make_builds(source)["active"]
    path = tmp_path / "target.sqlite"
    assert not path.exists()
    import_document(target, exported(source, build_id))
    with History.open(target) as history:
        assert [b.build_id for b in history.builds()] == [build_id]


def test_duplicate_is_refused_and_nothing_written(source, target):
    build_id = make_builds(source)["active"]
    doc = exported(source, build_id)
    import_document(target, doc)
    with pytest.raises(DuplicateBuild, match=f"build {build_id} is already in the target"):
        import_document(target, doc)
    with pytest.raises(DuplicateBuild):
        import_document(source, doc)
    with History.open(target) as history:
        assert len(history.events(build_id)) == len(doc["events"])


def test_unfinished_build_needs_allow_unfinished(source, target):
    build_id = make_builds(source)["queued"]
    doc = exported(source, build_id)
    with pytest.raises(PersistenceError, match="QUEUED, not finished"):
        import_document(target, doc)
    import_document(target, doc, allow_unfinished=True)
    with History.open(target) as history:
        assert history.build(build_id).state == "QUEUED"


def test_bad_documents_are_refused(source, target):
    build_id = make_builds(source)["rolled_back"]
    doc = exported(source, build_id)
    with pytest.raises(InvalidExport, match="not JSON"):
        export.loads(b"{nope", "x.json")
    with pytest.raises(InvalidExport, match="not a spawnflow build history export"):
        export.loads(json.dumps({"hello": 1}), "x.json")
    newer = dict(doc, version=99)
    with pytest.raises(InvalidExport, match="export version 99, newer"):
        import_document(target, newer)
    headless = copy.deepcopy(doc)
    del headless["events"][0]
    with pytest.raises(InvalidExport, match="first event is not the build's creation"):
        import_document(target, headless)
    edited = copy.deepcopy(doc)
    edited["build"]["state"] = "ACTIVE"
    with pytest.raises(InvalidExport, match="says state='ACTIVE' but its events say"):
        import_document(target, edited)
    illegal = copy.deepcopy(doc)
    illegal["events"] = [
        e for e in illegal["events"] if not (e["kind"] == "build" and e["to_state"] == "REVERTING")
    ]
    with pytest.raises(PersistenceError, match="RUNNING -> ROLLED_BACK is not allowed"):
        import_document(target, illegal)
    log = EventLog.open(target)
    try:
        assert replay.current(log)["builds"] == {}  # all or nothing
    finally:
        log.close()


def test_foreign_or_newer_target_is_refused(source, tmp_path):
    doc = exported(source, make_builds(source)["active"])
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("create table invoices (id integer primary key)")
    with pytest.raises(SchemaError, match="not a spawnflow database"):
        import_document(f"sqlite:///{foreign}", doc)
    newer = f"sqlite:///{tmp_path}/newer.sqlite"
    EventLog.open(newer).close()
    with sqlite3.connect(tmp_path / "newer.sqlite") as conn:
        conn.execute(f"update {db.VERSION_TABLE} set version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this spawnflow"):
        import_document(newer, doc)


# -- the trust boundary: a document can only add its own build ---------------------------------


def fingerprint(url: str) -> dict[str, str]:
    """sha256 of the SQLite file and of its -wal/-shm (if any): the bytes on disk."""
    path = Path(url.removeprefix("sqlite:///"))
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if p.exists()
    }


def ids_of(url: str, build_id: str) -> dict[str, list[str]]:
    """The flow and atom uuids of a build in the database at ``url``."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        flows = (
            conn.execute(
                sa.text("select uuid from flowdetails where book_uuid = :b"), {"b": build_id}
            )
            .scalars()
            .all()
        )
        atoms = (
            conn.execute(
                sa.text("select uuid from atomdetails where book_uuid = :b order by name"),
                {"b": build_id},
            )
            .scalars()
            .all()
        )
    engine.dispose()
    return {"flows": list(flows), "atoms": list(atoms)}


def first(doc: dict, kind: str, **where: object) -> dict:
    return next(
        e
        for e in doc["events"]
        if e["kind"] == kind and all(e.get(k) == v for k, v in where.items())
    )


def renamed(doc: dict, old: str, new: str) -> dict:
    """``doc`` with every occurrence of id ``old`` replaced by ``new`` (a consistent forgery)."""
    return json.loads(json.dumps(doc).replace(old, new))


@pytest.fixture
def victim(source, target) -> dict:
    """A document of the source, and a target that already holds other builds."""
    doc = exported(source, make_builds(source)["rolled_back"])
    victim_id = make_builds(target)["active"]
    return {
        "doc": doc,
        "id": victim_id,
        **ids_of(target, victim_id),
        "own": ids_of(source, doc["build"]["build_id"]),
    }


def _swap_logbook(v: dict) -> dict:
    doc = copy.deepcopy(v["doc"])
    first(doc, "logbook")["subject"] = v["id"]
    return doc


def _swap_flow_parent(v: dict) -> dict:
    doc = copy.deepcopy(v["doc"])
    first(doc, "flow")["payload"]["parent"] = v["id"]
    return doc


def _swap_atom_parent(v: dict) -> dict:
    doc = copy.deepcopy(v["doc"])
    first(doc, "atom")["payload"]["parent"] = v["flows"][0]
    return doc


def _event_of_victim(v: dict) -> dict:
    doc = copy.deepcopy(v["doc"])
    doc["events"][3]["build_id"] = v["id"]
    return doc


@pytest.mark.parametrize(
    ("attack", "expected", "message"),
    [
        (
            _swap_logbook,
            InvalidExport,
            r"events\[1\]\.subject: the logbook of a build has the "
            "build's id",
        ),
        (
            _swap_flow_parent,
            InvalidExport,
            r"events\[2\]\.payload\.parent: a flow's parent must be "
            "the build's logbook",
        ),
        (
            _swap_atom_parent,
            InvalidExport,
            r"payload\.parent: an atom's parent must be one of this "
            "build's flows",
        ),
        (_event_of_victim, InvalidExport, r"events\[3\]\.build_id: is not the build's id"),
        # Consistent forgeries: the document is well-formed, its ids are another build's rows.
        (
            lambda v: renamed(v["doc"], v["own"]["flows"][0], v["flows"][0]),
            InvalidExport,
            "collide with rows of another build in the target database",
        ),
        (
            lambda v: renamed(v["doc"], v["own"]["atoms"][0], v["atoms"][0]),
            InvalidExport,
            "collide with rows of another build in the target database",
        ),
        (
            lambda v: renamed(v["doc"], v["doc"]["build"]["build_id"], v["id"]),
            DuplicateBuild,
            "is already in the target database",
        ),
    ],
    ids=[
        "logbook",
        "flow-parent",
        "atom-parent",
        "event-build-id",
        "flow-uuid",
        "atom-uuid",
        "build-id",
    ],
)
def test_ids_of_another_build_are_refused_and_the_target_is_unchanged(
    victim, target, attack, expected, message
):
    doc = attack(victim)
    with History.open(target) as history:
        before = history.build(victim["id"])
    disk = fingerprint(target)
    with pytest.raises(expected, match=message) as refused:
        import_document(target, doc)
    assert "\n" not in str(refused.value)
    assert fingerprint(target) == disk  # not a byte written
    with History.open(target) as history:
        assert history.build(victim["id"]) == before


def _events(doc: dict, kind: str, **where: object) -> list[int]:
    return [
        i
        for i, e in enumerate(doc["events"])
        if e["kind"] == kind and all(e.get(k) == v for k, v in where.items())
    ]


def _at(doc: dict, kind: str, nth: int = 0, **where: object) -> dict:
    return doc["events"][_events(doc, kind, **where)[nth]]


def _swap(doc: dict, i: int, j: int) -> None:
    """Swap two events, keeping each position's sequence number and time."""
    events = doc["events"]
    events[i], events[j] = events[j], events[i]
    events[i]["seq"], events[j]["seq"] = sorted((events[i]["seq"], events[j]["seq"]))


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


MALFORMED = [
    (
        "time-1e12",
        lambda d: d["events"][5].update(ts=1e12),
        r"events\[5\]\.ts: must be a time in POSIX seconds between 2000-01-01 and 9999-12-31, "
        "not 1000000000000.0",
    ),
    ("time-negative", lambda d: d["events"][2].update(ts=-5), r"events\[2\]\.ts: must be a time"),
    ("time-bool", lambda d: d["events"][2].update(ts=True), r"events\[2\]\.ts: must be a time"),
    (
        "time-text",
        lambda d: d["events"][2].update(ts="2024-05-01"),
        r"events\[2\]\.ts: must be a time",
    ),
    (
        "time-inf",
        lambda d: d["events"][2].update(ts=float("inf")),
        r"events\[2\]\.ts: must be a finite number",
    ),
    ("row-time", lambda d: d["build"].update(created_at=1e15), r"build\.created_at: must be a"),
    (
        "payload-list",
        lambda d: d["events"][3].update(payload=[1]),
        r"events\[3\]\.payload: must be an object or null",
    ),
    (
        "set-list",
        lambda d: _at(d, "atom", from_state="PENDING").update(payload={"set": []}),
        r"payload\.set: must be an object or null",
    ),
    (
        "atom-without-parent",
        lambda d: _at(d, "atom", to_state="PENDING")["payload"].pop("parent"),
        r"events\[4\]\.payload\.parent: an atom's parent must be one of this build's flows",
    ),
    (
        "atom-type",
        lambda d: _at(d, "atom")["payload"].update(type=["TASK_DETAIL"]),
        r"events\[4\]\.payload\.type: must be one of",
    ),
    (
        "spec-list",
        lambda d: d["events"][0]["payload"].update(spec=[]),
        "the first event is not the build's creation",
    ),
    (
        "host-list",
        lambda d: d["events"][0]["payload"].update(host=["cmp-1"]),
        r"events\[0\]\.payload\.host: must be text",
    ),
    (
        "row-state-list",
        lambda d: d["build"].update(state=["ACTIVE"]),
        r"build\.state: must be one of",
    ),
    (
        "kind-object",
        lambda d: d["events"][2].update(kind={"a": 1}),
        r"events\[2\]\.kind: must be one of",
    ),
    (
        "duplicate-seq",
        lambda d: d["events"][4].update(seq=d["events"][3]["seq"]),
        r"events\[4\]\.seq: must be an integer above the previous event's",
    ),
    ("missing-field", lambda d: d["events"][2].pop("name"), r"events\[2\]: no 'name'"),
    (
        "unknown-field",
        lambda d: d["events"][2].update(extra=1),
        r"events\[2\]: unknown field 'extra'",
    ),
    ("unknown-top-field", lambda d: d.update(extra=1), r"document: unknown field 'extra'"),
    (
        "long-name",
        lambda d: _at(d, "atom").update(name="x" * 300),
        r"events\[4\]\.name: longer than 255 characters",
    ),
    (
        "nul-in-name",
        lambda d: d["events"][0].update(name="vm\x00"),
        r"events\[0\]\.name: contains a NUL character",
    ),
    (
        "long-subject",
        lambda d: _at(d, "flow").update(subject="f" * 40),
        r"events\[2\]\.subject: longer than 36 characters",
    ),
    (
        "not-a-uuid",
        lambda d: d["build"].update(build_id="../../etc"),
        r"build\.build_id: must be a lowercase UUID, not '\.\./\.\./etc'",
    ),
    (
        "illegal-atom-transition",
        lambda d: _at(d, "atom", from_state="PENDING", to_state="RUNNING").update(
            to_state="REVERTED", payload={"set": {"state": "REVERTED"}}
        ),
        r"atom transition PENDING -> REVERTED is not allowed",
    ),
    (
        "lying-from-state",
        lambda d: _at(d, "atom", from_state="RUNNING", to_state="SUCCESS").update(
            from_state="PENDING"
        ),
        r"from_state: says 'PENDING' but the state was 'RUNNING'",
    ),
    (
        "lying-to-state",
        lambda d: _at(d, "atom", from_state="RUNNING", to_state="SUCCESS").update(
            to_state="FAILURE"
        ),
        r"to_state: says 'FAILURE' but the change makes it 'SUCCESS'",
    ),
    (
        "unknown-atom-state",
        lambda d: _at(d, "atom", from_state="RUNNING", to_state="SUCCESS").update(
            to_state="DONE", payload={"set": {"state": "DONE"}}
        ),
        r"'DONE' is not a TaskFlow atom state",
    ),
    (
        "illegal-build-transition",
        lambda d: _at(d, "build", to_state="RUNNING").update(to_state="ACTIVE"),
        r"build transition QUEUED -> ACTIVE is not allowed",
    ),
    (
        "build-state-with-a-newline",
        lambda d: _at(d, "build", to_state="RUNNING").update(to_state="RUNNING\n"),
        r"build transition QUEUED -> 'RUNNING\\n' is not allowed",
    ),
    (
        "logbook-cleared",
        lambda d: _at(d, "logbook").update(to_state="CLEARED"),
        r"events\[1\]\.to_state: logbook 'CLEARED' cannot be imported",
    ),
    (
        "flow-before-logbook",
        lambda d: _swap(d, 1, 2),
        r"events\[1\]: a flow before the build's logbook",
    ),
    (
        "atom-id-is-a-flow",
        lambda d: _at(d, "atom").update(subject=_at(d, "flow")["subject"]),
        r"events\[4\]\.subject: an atom's id must be its own",
    ),
    (
        "meta-list",
        lambda d: _at(d, "atom", 1)["payload"]["set"].update(meta=[]),
        r"payload\.set\.meta: must be an object or null",
    ),
    (
        "deep",
        lambda d: d["events"][0]["payload"]["spec"].update(x=_nested(200)),
        r"events\[0\]\.payload: nested deeper than 64 levels",
    ),
    (
        "huge-int",
        lambda d: d["events"][0]["payload"]["spec"].update(x=10**30),
        r"events\[0\]\.payload\.spec\.x: integer out of the 64-bit range",
    ),
    (
        "nan-in-payload",
        lambda d: d["events"][0]["payload"]["spec"].update(x=float("nan")),
        r"spec\.x: must be a finite number, not nan",
    ),
    (
        "key-not-text",
        lambda d: d["events"][0]["payload"]["spec"].update({1: 2}),
        r"spec: key 1 is not a string",
    ),
    (
        "lone-surrogate",
        lambda d: d["events"][0].update(name="vm\ud800"),
        r"events\[0\]\.name: text with a lone surrogate is not UTF-8",
    ),
    (
        "not-json-value",
        lambda d: d["events"][0]["payload"]["spec"].update(x={1, 2}),
        r"spec\.x: a set is not a JSON value",
    ),
    (
        "edited-row",
        lambda d: d["build"].update(instance_name="\x1b]0;pwned\x07"),
        r"build row says instance_name='\\x1b\]0;pwned\\x07' but its events say",
    ),
    ("no-events", lambda d: d.update(events=[]), "document: no events"),
    (
        "external-from-state",
        lambda d: d["events"].append(
            {
                "seq": d["events"][-1]["seq"] + 1,
                "ts": d["events"][-1]["ts"],
                "kind": "external",
                "subject": "port",
                "name": "network-vif-plugged",
                "from_state": "x",
                "to_state": "completed",
                "payload": None,
            }
        ),
        r"events\[\d+\]\.from_state: an external event has no from_state",
    ),
    (
        "external-without-tag",
        lambda d: d["events"].append(
            {
                "seq": d["events"][-1]["seq"] + 1,
                "ts": d["events"][-1]["ts"],
                "kind": "external",
                "subject": None,
                "name": "network-vif-plugged",
                "from_state": None,
                "to_state": "completed",
                "payload": None,
            }
        ),
        r"events\[\d+\]\.subject: must be text, not None",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_documents_are_one_line_and_write_nothing(source, target, mutate, message):
    doc = exported(source, make_builds(source)["rolled_back"])
    make_builds(target)
    mutate(doc)
    disk = fingerprint(target)
    with pytest.raises(InvalidExport, match=message) as refused:
        import_document(target, doc)
    assert "\n" not in str(refused.value)
    assert fingerprint(target) == disk


def test_the_unmutated_document_of_the_malformed_cases_imports(source, target):
    """The cases above fail for their mutation, not because the base document is refused."""
    doc = exported(source, make_builds(source)["rolled_back"])
    make_builds(target)
    assert import_document(target, doc) == doc["build"]["build_id"]


def test_external_events_and_recoveries_import(source, target, tmp_path):
    """The strict checks accept what real builds write: waits, events, interruptions."""
    from tests.unit.test_history_diagnose import rollback_flow, snapshot_while

    log = EventLog.open(source)
    try:
        build_id, crashed = snapshot_while(log, source, tmp_path, "vifs")
    finally:
        log.close()
    log = EventLog.open(crashed)
    try:
        log.transition_build(build_id, lifecycle.INTERRUPTED)
        log.record_external_event(build_id, "network-vif-plugged", "port-1", "completed")
        rollback_flow(log, build_id, "[recovery] policy = rollback")
    finally:
        log.close()
    doc = exported(crashed, build_id)
    assert {e["kind"] for e in doc["events"]} == {"build", "logbook", "flow", "atom", "external"}
    import_document(target, doc)
    with History.open(crashed) as a, History.open(target) as b:
        assert b.build(build_id) == a.build(build_id)


def test_loads_bounds_nesting_numbers_size_and_text(source):
    with pytest.raises(InvalidExport, match=r"x\.json: nested deeper than 64 levels"):
        export.loads("[" * 100_000 + "]" * 100_000, "x.json")
    with pytest.raises(InvalidExport, match=r"x\.json is not JSON: NaN is not a number JSON"):
        export.loads('{"format": NaN}', "x.json")
    with open("/dev/zero", "rb") as zero, pytest.raises(InvalidExport, match="larger than 64 MiB"):
        export.read(zero, "/dev/zero")
    text = export.dumps(exported(source, make_builds(source)["active"]))
    assert text.isascii()  # controls, bidi and the rest are \u escapes
    name = json.loads(text)["build"]["instance_name"]
    with pytest.raises(InvalidExport, match="lone surrogate"):
        export.loads(text.replace(f'"{name}"', '"\\ud800"'), "x.json")
    assert export.loads(text, "x.json")["format"] == export.FORMAT


def test_a_refused_import_creates_no_database(source, tmp_path):
    doc = exported(source, make_builds(source)["active"])
    doc["events"][2]["ts"] = 1e12
    path = tmp_path / "new.sqlite"
    with pytest.raises(InvalidExport, match=r"events\[2\]\.ts"):
        import_document(f"sqlite:///{path}", doc)
    assert not path.exists()
