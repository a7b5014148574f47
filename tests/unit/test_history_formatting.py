"""The CLI's 80-column helpers: short durations and tables fitted by shortening."""

from __future__ import annotations

import sqlalchemy as sa

from spawnflow.cmd.render.events import payload_summary
from spawnflow.cmd.render.text import fit, safe, shorten, wrap
from spawnflow.cmd.render.times import Duration, Stamp, duration, iso, timestamp
from spawnflow.history import Event


def took(value: float | None) -> str:
    return duration(value, Duration.COLUMN)


def human(value: float | None) -> str:
    return duration(value, Duration.SENTENCE)


def test_took_is_at_most_five_columns():
    samples = [
        0,
        0.0004,
        0.012,
        0.9994,
        0.9996,
        1.234,
        9.99,
        12.34,
        99.9,
        123,
        999,
        1024,
        5999,
        6000,
        3600 * 99,
        3600 * 100,
        86400 * 400,
    ]
    shown = [took(v) for v in samples]
    assert all(len(s) <= 5 for s in shown), shown
    assert shown[:6] == ["<1ms", "<1ms", "12ms", "999ms", "1.00s", "1.23s"]
    assert took(1024) == "17m04" and took(None) == "-"
    assert human(0.1484) == "0.148s" and human(10820) == "3h00m20s" and human(125) == "2m05s"


def width(columns, rows) -> int:
    cells = [columns] + [[str(c) for c in row] for row in rows]
    return sum(max(len(r[i]) for r in cells) for i in range(len(columns))) + 3 * len(columns) + 1


def test_fit_shortens_flexible_columns_only_and_not_below_their_floor():
    columns = ("Id", "Name", "Error")
    rows = [("1", "a" * 30, "E" * 60), ("2", "short", "")]
    fitted = fit(columns, rows, {"Name": 6, "Error": 5}, width=60)
    assert width(columns, fitted) <= 60
    assert fitted[0][0] == "1" and fitted[0][1].endswith("…") and fitted[0][2].endswith("…")
    assert fitted[1] == ("2", "short", "")
    tight = fit(columns, rows, {"Name": 6, "Error": 5}, width=10)
    assert [len(c) for c in tight[0][1:]] == [6, 5]  # floors hold even when it cannot fit
    assert fit(columns, [("1", "x\ny", "")], {}, width=80) == [("1", "x y", "")]


def test_payload_summary_leaves_out_what_columns_say():
    event = Event(
        1,
        0.0,
        "atom",
        "image",
        "RUNNING",
        "FAILURE",
        {
            "set": {
                "state": "FAILURE",
                "failure": {
                    "exc_type_names": ["spawnflow.exceptions.ImageError"],
                    "exception_str": "x",
                },
            }
        },
    )
    assert payload_summary(event) == "failure=ImageError"
    created = Event(2, 0.0, "atom", "vifs", None, "PENDING", {"set": {"state": "PENDING"}})
    assert payload_summary(created) == "created"
    build = Event(
        3,
        0.0,
        "build",
        "vm",
        None,
        "QUEUED",
        {"host": "h", "spec": {"flavor": {"vcpus": 2, "memory_mb": 512}, "vifs": [{}]}},
    )
    assert payload_summary(build) == "host=h, spec=2vcpu/512MB 1vif 0vol"
    progress = Event(
        4,
        0.0,
        "atom",
        "x",
        "RUNNING",
        "RUNNING",
        {"set": {"meta": {"progress": 0.5}}, "unset": ["results"]},
    )
    assert payload_summary(progress) == "progress=0.5, -results"


# -- terminal-safe output and odd stored values ------------------------------------------------


def test_safe_escapes_controls_bidi_and_invisible_characters():
    assert safe("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert safe("a\x9b31mb\x7f\x00") == "a\\x9b31mb\\x7f\\x00"  # C1 CSI, DEL, NUL
    assert safe("\u202egnp.exe\u202c") == "\\u202egnp.exe\\u202c"  # bidi override
    assert safe("x\u200by\u2066z\u2069\ufeff\u2028") == "x\\u200by\\u2066z\\u2069\\ufeff\\u2028"
    assert safe("tab\tline\nend\r") == "tab\\tline\\nend\\r"
    assert safe("\U000e0041") == "\\U000e0041"  # a tag character (invisible)
    assert safe("\ud800") == "\\ud800"  # a lone surrogate would not even encode
    assert safe("web-1 é 💥 ✓ a\u00a0b") == "web-1 é 💥 ✓ a\u00a0b"  # ordinary text stays
    assert safe(safe("\x1b[2J\u202e")) == safe("\x1b[2J\u202e")
    assert safe("a\nb\tc", keep="\n\t") == "a\nb\tc"
    assert safe(None) == "None"


def test_tables_shorten_and_wrap_show_stored_text_escaped():
    hostile = "vm\x1b]0;pwned\x07\u202e1-bew"
    (row,) = fit(("Name", "Id"), [(hostile, "\x9b1")], {"Name": 4})
    assert row == ("vm\\x1b]0;pwned\\x07\\u202e1-bew", "\\x9b1")
    assert shorten(hostile, 8) == "vm\\x1b]…"
    assert wrap("error", f"boom {hostile}", 80) == [f"error     boom {safe(hostile)}"]
    assert fit(("A",), [("x\ny",)], {}) == [("x y",)]  # line breaks still fold to spaces


def test_times_no_date_can_show_are_printed_as_numbers():
    for style in Stamp:
        assert timestamp(1e12, style) == "1e+12", style
    assert iso(1e12) == "1e+12" and iso(None) is None
    assert timestamp(-1e20) == "-1e+20"
    assert human(float("inf")) == "?" and took(float("nan")) == "?"
    assert timestamp(0) == "1970-01-01 00:00:00Z"


def test_one_formatter_per_kind_in_each_style():
    assert timestamp(None) == "-" and duration(None) == "-"
    moment = 1_700_000_000.25
    assert timestamp(moment) == "2023-11-14 22:13:20Z"
    assert timestamp(moment, Stamp.SHORT) == "11-14 22:13"
    assert timestamp(moment, Stamp.CLOCK) == "22:13:20"
    assert timestamp(moment, Stamp.CLOCK_MS) == "22:13:20.250"
    assert iso(moment) == "2023-11-14T22:13:20.250Z"
    assert duration(0.25, Duration.OFFSET) == "+0.25s" and duration(12, Duration.OFFSET) == "+12s"
    assert duration(125, Duration.OFFSET) == "+2m05s"
    assert duration(3 * 3600 + 5.5, Duration.OFFSET) == "+3h00m05.5s"
    assert duration(125, Duration.SECONDS) == "125.000s"
    assert human(2 * 86400 + 3 * 3600) == "2d03h"


def test_odd_rows_of_an_older_database_still_read(log, url):
    """Rows no import accepts any more (a time of 1e12, a list where an object belongs, a
    failure that is text) still list, show, diagnose and summarise."""
    from spawnflow.cmd.render.build import step_full_rows, step_rows, summary
    from spawnflow.history import History
    from tests.unit.conftest import run_build

    build_id = run_build(log, fail_at="image")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update builds set created_at = 1e12, updated_at = 1e12 + 5 where build_id = :b"
            ),
            {"b": build_id},
        )
        for kind, to_state, payload in (
            ("build", "RUNNING", '"text"'),
            ("atom", "FAILURE", '{"set": {"failure": "boom", "state": "FAILURE"}}'),
            ("atom", "REVERTED", '{"set": [1, 2]}'),
            ("flow", "RUNNING", "[1, 2]"),
        ):
            conn.execute(
                sa.text(
                    "update events set payload = :p where build_id = :b and "
                    "kind = :k and to_state = :t"
                ),
                {"p": payload, "b": build_id, "k": kind, "t": to_state},
            )
        conn.execute(
            sa.text(
                "update events set payload = :p where build_id = :b and "
                "kind = 'build' and to_state = 'QUEUED'"
            ),
            {"p": '{"spec": ["x"], "host": "cmp-1"}', "b": build_id},
        )
    engine.dispose()
    with History.open(url) as history:
        (row,) = history.builds()
        build = history.build(build_id)
        stats = history.stats()
        events = history.events(build_id)
    assert timestamp(row.created_at, Stamp.SHORT) == "1e+12" and row.duration == 5
    assert build.step("image").error == "boom" and build.failed_step == "image"
    assert stats.builds == {"ROLLED_BACK": 1}
    assert "failed at step image: boom" in build.diagnose().text
    text = summary(build, 80)
    assert "created 1e+12" in text and "\nfailed    image: boom" in text
    assert step_rows(build, 80)[1][0] == "image" and step_full_rows(build)
    shown = [payload_summary(e) for e in events]
    assert "[1,2]" in shown and "text" in shown
