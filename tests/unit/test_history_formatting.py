"""The CLI's 80-column helpers: short durations and tables fitted by shortening."""

from __future__ import annotations

from spawnflow.cmd.formatting import fit, human, took
from spawnflow.cmd.history import payload_summary
from spawnflow.history import Event


def test_took_is_at_most_five_columns():
    samples = [0, 0.0004, 0.012, 0.9994, 0.9996, 1.234, 9.99, 12.34, 99.9, 123, 999, 1024,
               5999, 6000, 3600 * 99, 3600 * 100, 86400 * 400]
    shown = [took(v) for v in samples]
    assert all(len(s) <= 5 for s in shown), shown
    assert shown[:6] == ["<1ms", "<1ms", "12ms", "999ms", "1.00s", "1.23s"]
    assert took(1024) == "17m04" and took(None) == "-"
    assert human(0.1484) == "0.148s" and human(10820) == "3h00m20s" and human(125) == "2m05s"


def width(columns, rows) -> int:  # noqa: ANN001
    cells = [columns] + [[str(c) for c in row] for row in rows]
    return sum(max(len(r[i]) for r in cells) for i in range(len(columns))) \
        + 3 * len(columns) + 1


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
    event = Event(1, 0.0, "atom", "image", "RUNNING", "FAILURE", {"set": {
        "state": "FAILURE", "failure": {"exc_type_names": ["spawnflow.exceptions.ImageError"],
                                        "exception_str": "x"}}})
    assert payload_summary(event) == "failure=ImageError"
    created = Event(2, 0.0, "atom", "vifs", None, "PENDING", {"set": {"state": "PENDING"}})
    assert payload_summary(created) == "created"
    build = Event(3, 0.0, "build", "vm", None, "QUEUED", {
        "host": "h", "spec": {"flavor": {"vcpus": 2, "memory_mb": 512}, "vifs": [{}]}})
    assert payload_summary(build) == "host=h, spec=2vcpu/512MB 1vif 0vol"
    progress = Event(4, 0.0, "atom", "x", "RUNNING", "RUNNING",
                     {"set": {"meta": {"progress": 0.5}}, "unset": ["results"]})
    assert payload_summary(progress) == "progress=0.5, -results"
