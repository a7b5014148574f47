"""No stored string drives the operator's terminal: every ``history`` command, every format.

The hostile strings arrive the way they would on a real host: in an import
document (a name, a host and errors with terminal escapes, a bidi override,
zero-width and C1 characters), or in rows an older spawnflow wrote (a time of
1e12, lists where objects belong). The CLI runs in a subprocess; its raw bytes
are checked.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from lxml import etree

from spawnflow.history import History, export
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import load_conf
from tests.unit.conftest import run_build

NAME = "web\x1b]0;pwned\x07\u202e1-bew\u200b\x9b31m"
HOST = "cmp\x1b[2J\u2066-1"
MESSAGE = "boom\x1b[31m red\u202e\x7f"
# Characters that must never reach a terminal raw (a newline ends a line, nothing more).
UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spawnflow.cmd.main", "--config-file", str(conf), *args],
        capture_output=True,
        timeout=120,
    )


def clean(raw: bytes, where: str) -> str:
    """The output as text; fails if any unsafe character is in it."""
    text = raw.decode("utf-8")  # strict: no invalid bytes either
    bad = sorted(
        {f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in UNSAFE}
    )
    assert not bad, f"{where}: raw {', '.join(bad)} in {text!r}"
    return text


def hostile_document(source: str) -> dict:
    """A real export whose instance name, host and errors carry terminal escapes."""
    log = EventLog.open(source)
    try:
        build_id = run_build(log, fail_at="image")
    finally:
        log.close()
    with History.open(source) as history:
        doc = json.loads(export.dumps(history.export(build_id)))
    error = f"ImageChecksumMismatch: {MESSAGE}"
    doc["build"].update(instance_name=NAME, host=HOST, error=error)
    for event in doc["events"]:
        payload = event["payload"] or {}
        if event["kind"] == "build":
            event["name"] = NAME
            if "host" in payload:
                payload["host"] = HOST
            if "error" in payload:
                payload["error"] = error
        failure = (payload.get("set") or {}).get("failure") if event["kind"] == "atom" else None
        if failure:
            failure["exception_str"] = MESSAGE
    return doc


def odd_build(url: str) -> str:
    """A build as an older spawnflow could have left it: values no import accepts now."""
    log = EventLog.open(url)
    try:
        build_id = run_build(log, fail_at="vifs", name="odd")
    finally:
        log.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update builds set created_at = 1e12, updated_at = 1e12 + 3 where build_id = :b"
            ),
            {"b": build_id},
        )
        conn.execute(
            sa.text(
                "update events set payload = '[1, 2]' where build_id = :b "
                "and kind = 'build' and to_state = 'RUNNING'"
            ),
            {"b": build_id},
        )
        conn.execute(
            sa.text(
                "update events set payload = '{\"set\": [3]}' where build_id = :b "
                "and kind = 'atom' and to_state = 'FAILURE'"
            ),
            {"b": build_id},
        )
        conn.execute(
            sa.text(
                "update events set ts = 1e12 where build_id = :b "
                "and kind = 'atom' and to_state = 'REVERTED'"
            ),
            {"b": build_id},
        )
    engine.dispose()
    return build_id


@pytest.fixture
def hostile(tmp_path: Path) -> dict:
    load_conf(tmp_path)  # writes tmp_path/spawnflow.conf
    doc = hostile_document(f"sqlite:///{tmp_path}/source.sqlite")
    doc_file = tmp_path / "hostile.json"
    doc_file.write_text(json.dumps(doc))
    target = tmp_path / "target.sqlite"
    return {
        "conf": tmp_path / "spawnflow.conf",
        "doc": doc,
        "file": doc_file,
        "db": str(target),
        "id": doc["build"]["build_id"],
    }


def test_hostile_names_from_an_import_are_shown_escaped_everywhere(hostile, tmp_path):
    conf, db, build_id = hostile["conf"], hostile["db"], hostile["id"]
    result = cli(conf, "history", "import", str(hostile["file"]), "--db", db)
    assert result.returncode == 0, result.stderr
    clean(result.stdout, "import")
    odd = odd_build(f"sqlite:///{db}")

    calls = []
    for fmt in ("table", "value", "csv", "json", "yaml"):
        calls += [
            ("history", "list", "-f", fmt),
            ("history", "show", build_id, "-f", fmt, "--diagnose"),
        ]
    for fmt in ("table", "value", "csv", "json"):
        calls += [("history", "events", build_id, "-f", fmt)]
    calls += [
        ("history", "stats"),
        ("history", "stats", "-f", "csv"),
        ("history", "stats", "--by", "state"),
        ("history", "export", build_id),
        ("history", "show", odd, "--diagnose"),
        ("history", "show", odd, "-f", "json"),
        ("history", "events", odd),
        ("history", "timeline", build_id, "-o", str(tmp_path / "t.svg")),
        ("history", "timeline", build_id, "-o", str(tmp_path / "t.html")),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda call: cli(conf, *call, "--db", db), calls))
    outputs = {}
    for call, result in zip(calls, results, strict=True):
        where = " ".join(call)
        assert result.returncode == 0, (where, result.stderr)
        outputs[where] = clean(result.stdout, where)
        assert "Traceback" not in clean(result.stderr, where)

    # The hostile text is there, escaped (the checks above did not pass on empty output).
    shown = outputs[f"history show {build_id} -f table --diagnose"]
    assert "web\\x1b]0;pwned\\x07\\u202e" in shown  # (shortened to 30 columns)
    assert "cmp\\x1b[2J\\u2066-1" in shown and "boom\\x1b[31m" in shown  # (wrapped)
    assert "red\\u202e\\x7f" in shown
    assert "web\\x1b]0;pwned\\x07\\u202e1-bew\\u200b\\x9b31m" in outputs["history list -f value"]
    assert (
        "boom\\x1b[31m red\\u202e\\x7f" in outputs[f"history show {build_id} -f value --diagnose"]
    )
    # csv doubles the backslash of each escape
    assert "x1b]0;pwned" in outputs["history list -f csv"]
    assert "x1b[31m red" in outputs[f"history show {build_id} -f csv --diagnose"]
    # json and yaml escape by themselves and give the stored text back exactly.
    listed = json.loads(outputs["history list -f json"])
    assert {row["Instance"] for row in listed} == {NAME, "odd"}
    assert {row["Instance"] for row in yaml.safe_load(outputs["history list -f yaml"])} == {
        NAME,
        "odd",
    }
    assert json.loads(outputs[f"history export {build_id}"])["build"]["instance_name"] == NAME
    # The older build's odd values are shown, not a crash.
    assert "1e+12" in outputs["history list -f table"]
    assert "created 1e+12" in outputs[f"history show {odd} --diagnose"]
    # The pictures are well-formed, with the name escaped in their text.
    svg = etree.parse(str(tmp_path / "t.svg"))
    assert "web\\x1b]0;pwned" in "".join(svg.getroot().itertext())
    html = (tmp_path / "t.html").read_text()
    assert "web\\x1b]0;pwned" in html and "\x1b" not in html and "\u202e" not in html


def test_error_messages_are_escaped_too(hostile, tmp_path):
    conf, db = hostile["conf"], hostile["db"]
    assert cli(conf, "history", "import", str(hostile["file"]), "--db", db).returncode == 0
    cases = [
        # The refusal names the build's host, a stored string.
        (("history", "import", str(hostile["file"]), "--db", db), "already in the target"),
        # A path with escapes: the message quotes it.
        (
            ("history", "import", str(tmp_path / "gone\x1b[2J\u202e.json"), "--db", db),
            "cannot read",
        ),
    ]
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cases.append((("history", "import", str(deep), "--db", db), "nested deeper than 64"))
    for args, words in cases:
        result = cli(conf, *args)
        assert result.returncode == 1, result.stderr
        message = clean(result.stderr, " ".join(args)).strip()
        assert len(message.splitlines()) == 1 and words in message, message
        assert "Traceback" not in message
    assert "cmp\\x1b[2J\\u2066-1" in cli(conf, *cases[0][0]).stderr.decode()
