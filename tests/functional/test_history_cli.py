"""``spawnflow history ...`` and ``spawnflow event deliver`` as an operator runs them.

Real builds come from the agent on libvirt's test:///default driver (in this
process); every command runs in a subprocess on the same database.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

import spawnflow.conf
from spawnflow import Agent
from spawnflow.history import History
from spawnflow.history.times import clock
from spawnflow.persistence import db as schema
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import bridge_vif, load_conf, make_spec

SVG = "{http://www.w3.org/2000/svg}"


def cli(conf_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spawnflow.cmd.main", "--config-file", str(conf_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def fits(text: str) -> str:
    assert max(len(line) for line in text.splitlines()) <= 80, text
    return text


def cli_all(conf_file: Path, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several independent commands at once (each pays the interpreter's start-up)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(conf_file, *args), calls))


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, message
    return message


def diagnosis_text(out: str) -> str:
    """The ``diagnosis`` paragraph of ``history show --diagnose`` (table output), one line."""
    return " ".join(
        line[10:].strip()
        for line in out.splitlines()
        if line.startswith(("diagnosis", "          "))
    )


def destroy(conn: libvirt.virConnect, instance_uuid: str) -> None:
    try:
        dom = conn.lookupByUUIDString(instance_uuid)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


@pytest.fixture
def builds(agent, conf, image, test_conn, tmp_path):
    """An ACTIVE build and a ROLLED_BACK one (bad checksum, at step image)."""
    good = make_spec(image)
    good_id = agent.start_build(good)
    assert agent.wait(good_id, timeout=60).state == "ACTIVE"
    bad = make_spec(image)
    bad["image"]["checksum"] = "sha256:" + "0" * 64
    bad_id = agent.wait(agent.start_build(bad), timeout=60).build_id
    yield {
        "conf": tmp_path / "spawnflow.conf",
        "active": good_id,
        "rolled_back": bad_id,
        "good": good,
        "bad": bad,
    }
    destroy(test_conn, good["instance"]["uuid"])


def test_list_filters_and_pages(builds):
    conf = builds["conf"]
    table = fits(ok(cli(conf, "history", "list")))
    assert builds["active"][:8] in table and builds["rolled_back"][:8] in table
    assert "| ROLLED_BACK |" in table and "image" in table

    rows = json.loads(ok(cli(conf, "history", "list", "-f", "json")))
    assert [r["Build"] for r in rows] == [builds["rolled_back"], builds["active"]]
    bad = rows[0]
    assert (bad["State"], bad["Failed Step"]) == ("ROLLED_BACK", "image")
    assert bad["Error"].startswith("ImageChecksumMismatch")
    assert bad["Instance"] == builds["bad"]["instance"]["name"]
    assert bad["Started"].endswith("Z") and bad["Duration"] > 0

    def ids(*args: str) -> list[str]:
        return [
            r["Build"] for r in json.loads(ok(cli(conf, "history", "list", "-f", "json", *args)))
        ]

    host = bad["Host"]
    assert ids(
        "--state",
        "active,ROLLED_BACK",
        "--state",
        "QUEUED",
        "--failed-step",
        "image",
        "--since",
        "1h",
        "--host",
        host,
    ) == [builds["rolled_back"]]
    assert ids("--instance", builds["good"]["instance"]["uuid"]) == [builds["active"]]
    assert ids("--instance", builds["good"]["instance"]["name"], "--until", "2001-01-01") == []
    assert ids("--limit", "1", "--marker", builds["rolled_back"][:8]) == [builds["active"]]
    paged = ok(cli(conf, "history", "list", "--limit", "1"))
    assert f"next page: --marker {builds['rolled_back']}" in paged


def test_show_with_diagnosis_and_revert_column(builds):
    conf = builds["conf"]
    out = fits(ok(cli(conf, "history", "show", builds["rolled_back"][:8], "--diagnose")))
    assert f"build     {builds['rolled_back']}" in out
    assert "state     ROLLED_BACK  (QUEUED -> RUNNING -> REVERTING -> ROLLED_BACK)" in out
    diagnosis = diagnosis_text(out)
    assert diagnosis.startswith("failed at step image: ImageChecksumMismatch:")
    assert diagnosis.endswith("rolled back: 2 steps reverted")
    header = next(line for line in out.splitlines() if line.startswith("| Step "))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Step",
        "State",
        "Start",
        "Took",
        "Revert",
        "Try",
        "Error",
    ]
    image_row = next(line for line in out.splitlines() if line.startswith("| image "))
    cells = [c.strip() for c in image_row.strip("|").split("|")]
    assert cells[1] == "REVERTED" and cells[4] != "-" and cells[6].startswith("ImageChecks")

    steps = json.loads(ok(cli(conf, "history", "show", builds["rolled_back"], "-f", "json")))
    assert [s["Step"] for s in steps][:2] == ["disk_info", "image"]
    image = steps[1]
    assert image["Revert Duration"] >= 0 and image["Revert Start"] >= image["End"]
    assert image["Error"].startswith("ImageChecksumMismatch") and image["Attempts"] == 1
    assert steps[2]["State"] == "PENDING" and steps[2]["Start"] is None

    active = fits(ok(cli(conf, "history", "show", builds["active"], "--diagnose")))
    assert "diagnosis ACTIVE: all 10 steps succeeded in" in active


def test_events_and_stats(builds):
    conf = builds["conf"]
    table = fits(ok(cli(conf, "history", "events", builds["rolled_back"])))
    assert "| build   |" in table and "QUEUED→RUNNING" in table and "RUNNING→FAILURE" in table
    events = json.loads(ok(cli(conf, "history", "events", builds["rolled_back"], "-f", "json")))
    assert [e["Seq"] for e in events] == sorted(e["Seq"] for e in events)
    assert events[0]["Kind"] == "build" and events[0]["To"] == "QUEUED"
    assert events[0]["Payload"]["spec"]["instance"]["uuid"] == builds["bad"]["instance"]["uuid"]
    only = json.loads(
        ok(cli(conf, "history", "events", builds["rolled_back"], "--kind", "build", "-f", "json"))
    )
    assert [e["To"] for e in only] == ["QUEUED", "RUNNING", "REVERTING", "ROLLED_BACK"]

    stats = fits(ok(cli(conf, "history", "stats")))
    assert "builds    2 (ACTIVE 1, ROLLED_BACK 1)" in stats
    steps = {s["Step"]: s for s in json.loads(ok(cli(conf, "history", "stats", "-f", "json")))}
    assert steps["image"]["Runs"] == 2 and steps["image"]["Failed"] == 1
    assert steps["wait_for_boot"]["Runs"] == 1 and steps["disk_info"]["Reverts"] == 1
    states = json.loads(ok(cli(conf, "history", "stats", "--by", "state", "-f", "json")))
    assert {s["State"]: s["Builds"] for s in states} == {"ACTIVE": 1, "ROLLED_BACK": 1}


def test_export_import_round_trip(builds, tmp_path):
    conf = builds["conf"]
    doc_file = tmp_path / "build.json"
    other = tmp_path / "other.sqlite"
    ok(cli(conf, "history", "export", builds["rolled_back"], "-o", str(doc_file)))
    doc = json.loads(doc_file.read_text())
    assert doc["format"] == "spawnflow-build-history" and doc["build"]["state"] == "ROLLED_BACK"

    out = ok(cli(conf, "history", "import", str(doc_file), "--db", str(other)))
    assert (
        f"imported build {builds['rolled_back']} (ROLLED_BACK, {len(doc['events'])} events)" in out
    )
    original = ok(cli(conf, "history", "show", builds["rolled_back"], "-f", "json"))
    copied = ok(
        cli(conf, "history", "show", builds["rolled_back"], "-f", "json", "--db", str(other))
    )
    assert json.loads(copied) == json.loads(original)
    assert ok(cli(conf, "history", "export", builds["rolled_back"], "--db", str(other))).count(
        '"kind"'
    ) == len(doc["events"])

    refused(
        cli(conf, "history", "import", str(doc_file), "--db", str(other)),
        "already in the target",
        "nothing imported",
    )
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("create table invoices (id integer primary key)")
    refused(
        cli(conf, "history", "import", str(doc_file), "--db", str(foreign)),
        "not a spawnflow database",
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{]")
    refused(cli(conf, "history", "import", str(bad), "--db", str(other)), "is not JSON")


def test_timeline_files(builds, tmp_path):
    conf = builds["conf"]
    svg_file, html_file = tmp_path / "t.svg", tmp_path / "t.html"
    out = ok(cli(conf, "history", "timeline", builds["rolled_back"], "-o", str(svg_file)))
    assert "wrote" in out
    svg = etree.parse(str(svg_file)).getroot()
    rows = [g.get("data-step") for g in svg.iter(f"{SVG}g") if g.get("class") == "step"]
    assert rows[:2] == ["disk_info", "image"] and len(rows) == 10
    phases = {
        (r.get("data-step"), r.get("data-phase"))
        for r in svg.iter(f"{SVG}rect")
        if r.get("data-phase")
    }
    assert {
        ("disk_info", "forward"),
        ("image", "forward"),
        ("disk_info", "revert"),
        ("image", "revert"),
    } == phases
    ok(cli(conf, "history", "timeline", builds["rolled_back"], "-o", str(html_file)))
    html = html_file.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "<svg" in html
    refused(
        cli(conf, "history", "timeline", builds["active"], "-o", str(tmp_path / "t.png")),
        "cannot tell the format",
    )


def test_purge(builds, conf):
    eventlog = EventLog.open(spawnflow.conf.database_url(conf))
    try:
        eventlog.create_build(
            "7e57b0b0-0000-4000-8000-000000000001",
            instance_uuid="7e57b0b0-0000-4000-8000-000000000002",
            instance_name="queued",
            host="elsewhere",
            spec={},
        )
    finally:
        eventlog.close()
    conf_file = builds["conf"]
    assert "would remove 0 finished builds" in ok(
        cli(conf_file, "history", "purge", "--older-than", "1", "--dry-run")
    )
    assert "would remove 2 finished builds" in ok(
        cli(conf_file, "history", "purge", "--older-than", "0", "--dry-run")
    )
    out = ok(cli(conf_file, "history", "purge", "--older-than", "0", "--batch-size", "1"))
    assert out.strip() == "removed 2 finished builds older than 0 days"
    left = json.loads(ok(cli(conf_file, "history", "list", "-f", "json")))
    assert [r["State"] for r in left] == ["QUEUED"]
    refused(cli(conf_file, "history", "show", builds["active"]), f"no build {builds['active']}")
    result = cli(conf_file, "history", "purge", "--older-than", "-3")
    assert result.returncode == 2 and "days must be >= 0" in result.stderr


def test_errors_are_one_line(tmp_path, conf):
    conf_file = tmp_path / "spawnflow.conf"
    missing = tmp_path / "missing.sqlite"
    EventLog.open(spawnflow.conf.database_url(conf)).close()
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("create table invoices (id integer primary key)")
    newer = tmp_path / "newer.sqlite"
    EventLog.open(f"sqlite:///{newer}").close()
    with sqlite3.connect(newer) as db:
        db.execute(f"update {schema.VERSION_TABLE} set version_num = '9999'")
    instance = "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01"
    cases = [
        (("history", "list", "--db", str(missing)), "holds no spawnflow history"),
        (("history", "show", "0123abcd"), "no build 0123abcd"),
        (("history", "events", "nope"), "no build nope"),
        (("history", "export", "nope"), "no build nope"),
        (("history", "list", "--db", str(foreign)), "not a spawnflow database"),
        (("history", "show", "x", "--db", str(newer)), "newer than this"),
        (
            ("history", "list", "--db", "postgresql+psycopg://nobody:pw@127.0.0.1:1/none"),
            "cannot read",
        ),
        (
            ("event", "deliver", instance, "network-vif-plugged", "port"),
            "no unfinished build for instance",
        ),
        (("event", "deliver", instance, "network-vif-unplugged", "port"), "unknown event name"),
    ]
    results = cli_all(
        conf_file,
        *(args for args, _ in cases),
        ("history", "list", "--since", "last tuesday"),
        ("history", "list", "--state", "DONE"),
    )
    for (_args, words), result in zip(cases, results, strict=False):
        refused(result, words)
    assert not missing.exists()
    bad_time, bad_state = results[-2:]
    assert bad_time.returncode == 2 and "cannot read time 'last tuesday'" in bad_time.stderr
    assert bad_state.returncode == 2 and "unknown state DONE" in bad_state.stderr


# -- a build that waits for network-vif-plugged ----------------------------------------------


@pytest.fixture
def waiting_agent(tmp_path, monkeypatch):
    """An agent whose domains start paused and wait for VIF events (test:///default cannot
    start a domain paused itself, so start + suspend stands in for START_PAUSED)."""
    from spawnflow.virt import domain

    def start(host, uuid, paused):
        dom = host.conn.lookupByUUIDString(uuid)
        dom.createWithFlags(0)
        if paused:
            dom.suspend()

    monkeypatch.setattr("spawnflow.virt.host.PAUSED_CAPABLE_TYPES", frozenset({"test"}))
    monkeypatch.setattr(domain, "start", start)
    conf = load_conf(
        tmp_path,
        libvirt={"connection_uri": "test:///default", "virt_type": "test"},
        firewall={"driver": "noop"},
        network={"vif_plugging_timeout": 120},
    )
    with Agent(conf) as agent:
        yield agent, conf, tmp_path / "spawnflow.conf"


def wait_for_step(url: str, build_id: str, step: str, state: str = "RUNNING") -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        with History.open(url) as history:
            steps = {s.name: s.state for s in history.build(build_id).steps}
        if steps.get(step) == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"step {step} of {build_id} never reached {state}")


@pytest.fixture
def waiting_build(waiting_agent, image, bridge, test_conn):
    """A build with one inactive bridge VIF, waiting at step resume for its event:
    (agent, conf_file, url, build_id, instance, port)."""
    agent, conf, conf_file = waiting_agent
    url = spawnflow.conf.database_url(conf)
    spec = make_spec(image, vifs=[bridge_vif(bridge, active=False)])
    port, instance = spec["vifs"][0]["id"], spec["instance"]["uuid"]
    build_id = agent.start_build(spec)
    try:
        wait_for_step(url, build_id, "resume")
        yield agent, conf_file, url, build_id, instance, port
    finally:
        destroy(test_conn, instance)


def test_waiting_build_is_diagnosed_then_unblocked_by_event_deliver(waiting_build, tmp_path):
    agent, conf_file, url, build_id, instance, port = waiting_build
    with History.open(url) as history:
        since = history.build(build_id).waits[0].since
    out = fits(ok(cli(conf_file, "history", "show", build_id, "--diagnose")))
    text = diagnosis_text(out)
    assert text.startswith(
        f"waiting for network-vif-plugged for port {port} since "
        f"{clock(since)}, deadline {clock(since + 120)}"
    ), text
    assert "step resume running since" in text
    svg_file = tmp_path / "waiting.svg"
    ok(cli(conf_file, "history", "timeline", build_id, "-o", str(svg_file)))
    svg = etree.parse(str(svg_file)).getroot()
    assert [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "wait"]
    assert [r for r in svg.iter(f"{SVG}line") if r.get("class") == "deadline"]

    delivered = ok(cli(conf_file, "event", "deliver", instance, "network-vif-plugged", port))
    assert f"to build {build_id}" in delivered
    outcome = agent.wait(build_id, timeout=60)
    assert (outcome.state, outcome.error) == ("ACTIVE", None)
    with History.open(url) as history:
        build = history.build(build_id)
    assert build.waits[0].outstanding == [] and build.external_events[0].tag == port
    assert "ACTIVE: all 10 steps succeeded" in build.diagnose().text


def test_failed_vif_event_rolls_back_at_resume(waiting_build):
    agent, conf_file, _url, build_id, instance, port = waiting_build
    ok(
        cli(
            conf_file,
            "event",
            "deliver",
            instance,
            "network-vif-plugged",
            port,
            "--status",
            "failed",
        )
    )
    outcome = agent.wait(build_id, timeout=60)
    assert outcome.state == "ROLLED_BACK" and "VifPlugFailed" in outcome.error
    out = fits(ok(cli(conf_file, "history", "show", build_id, "--diagnose")))
    assert "diagnosis failed at step resume: VifPlugFailed: network-vif-plugged" in out
    rows = json.loads(
        ok(cli(conf_file, "history", "list", "--failed-step", "resume", "-f", "json"))
    )
    assert [r["Build"] for r in rows] == [build_id]
