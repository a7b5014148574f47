"""The timeline picture: well-formed, self-contained, one row per step, reverts and waits."""

from __future__ import annotations

import lxml.html
import pytest
from lxml import etree

from spawnflow.cmd.render.timeline_html import render_html
from spawnflow.cmd.render.timeline_layout import layout
from spawnflow.cmd.render.timeline_scale import Scale
from spawnflow.cmd.render.timeline_svg import CSS, render_svg
from spawnflow.history import (
    BuildHistory,
    EventWait,
    ExternalEvent,
    History,
    Interruption,
    Span,
    StepHistory,
    Transition,
)
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import run_build

SVG = "{http://www.w3.org/2000/svg}"
ODD = "fire<wall>&'q\""
STEPS = ["disk_info", "image", ODD, "volumes", "resume"]


@pytest.fixture
def rolled_back(url: str) -> BuildHistory:
    log = EventLog.open(url)
    try:
        build_id = run_build(log, steps=STEPS, fail_at="volumes")
    finally:
        log.close()
    with History.open(url) as history:
        return history.build(build_id)


def bars(svg: etree._Element, step: str, phase: str) -> list[etree._Element]:
    return [
        r
        for r in svg.iter(f"{SVG}rect")
        if r.get("data-step") == step and r.get("data-phase") == phase
    ]


def test_svg_has_a_labelled_row_and_bars_per_step(rolled_back):
    data = render_svg(rolled_back, diagnosis="failed at step volumes: <&>")
    svg = etree.fromstring(data)  # well-formed despite <&'" in a step name
    assert svg.tag == f"{SVG}svg" and svg.get("data-state") == "ROLLED_BACK"
    rows = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "step"]
    assert [g.get("data-step") for g in rows] == STEPS
    for row in rows:
        labels = [t.text for t in row.iter(f"{SVG}text") if t.get("class") == "label"]
        assert labels == [row.get("data-step")]
    # Forward bars for the steps that ran, the failed one red; revert bars for each of them.
    assert bars(svg, "volumes", "revert")[0].get("data-outcome") == "REVERTED"
    for step in ["disk_info", "image", ODD]:
        (forward,) = bars(svg, step, "forward")
        assert forward.get("data-outcome") == "SUCCESS"
        (revert,) = bars(svg, step, "revert")
        assert revert.get("data-outcome") == "REVERTED" and "revert" in revert.get("class")
        # Coloured by class: the revert's phase and outcome, not the run's.
        assert revert.get("class") != forward.get("class")
        assert float(revert.get("x")) >= float(forward.get("x"))
    (failed,) = bars(svg, "volumes", "forward")
    assert failed.get("data-outcome") == "FAILURE" and "failure" in failed.get("class")
    assert bars(svg, "resume", "forward") == [] and bars(svg, "resume", "revert") == []
    title = failed.find(f"{SVG}title").text
    assert "volumes run #1" in title and "ImageChecksumMismatch" in title
    assert b"fire&lt;wall&gt;&amp;'q\"" in data
    texts = " ".join(t.text or "" for t in svg.iter(f"{SVG}text"))
    assert "failed at step volumes: <&>" in texts and "ROLLED_BACK" in texts


def test_svg_is_self_contained(rolled_back):
    data = render_svg(rolled_back)
    svg = etree.fromstring(data)
    assert svg.find(f"{SVG}style") is not None
    assert not list(svg.iter(f"{SVG}script"))
    assert b"http://" not in data.replace(b"http://www.w3.org/2000/svg", b"")
    assert b"https://" not in data and b"href" not in data


def test_html_page_embeds_the_chart_and_the_step_table(rolled_back, tmp_path):
    data = render_html(rolled_back, diagnosis="why & how")
    assert data.startswith(b"<!DOCTYPE html>")
    page = lxml.html.fromstring(data)
    assert page.find(".//script") is None and page.find(".//link") is None
    assert page.find(".//head/style") is not None
    assert page.find(".//meta[@charset]") is not None
    assert "why & how" in page.findtext(".//p[@class='diagnosis']")
    svg = page.find(".//svg")
    assert svg is not None
    assert {g.get("data-step") for g in svg.iter("g") if g.get("class") == "step"} == set(STEPS)
    reverts = [r for r in svg.iter("rect") if (r.get("class") or "").startswith("bar revert")]
    assert len(reverts) == 4  # the three that succeeded and the failed one
    rows = page.findall(".//table[@class='steps']/tbody/tr")
    assert [r[0].text for r in rows] == STEPS
    assert rows[3].get("class") == "failure" or rows[3][1].text in ("REVERTED", "FAILURE")
    assert "ImageChecksumMismatch" in rows[3][-1].text


def crafted() -> BuildHistory:
    """A build that waited for two ports, was interrupted for 3 hours, then resumed."""
    t0 = 1_700_000_000.0
    build = BuildHistory(
        build_id="b" * 8 + "-0000-4000-8000-000000000000",
        instance_uuid="i" * 36,
        instance_name="web-1",
        host="cmp-1",
        state="ACTIVE",
        error=None,
        created_at=t0,
        updated_at=t0 + 3 * 3600 + 20,
    )
    build.lifecycle = [
        Transition(t0, None, "QUEUED", None),
        Transition(t0 + 0.1, "QUEUED", "RUNNING", None),
        Transition(t0 + 3 * 3600, "RUNNING", "INTERRUPTED", None),
        Transition(t0 + 3 * 3600 + 1, "INTERRUPTED", "RUNNING", {"reason": "x"}),
        Transition(t0 + 3 * 3600 + 20, "RUNNING", "ACTIVE", None),
    ]
    vifs = StepHistory(
        "vifs",
        "SUCCESS",
        t0 + 1,
        t0 + 2,
        attempts=1,
        spans=[Span("forward", 1, t0 + 1, t0 + 2, "SUCCESS")],
    )
    resume = StepHistory(
        "resume",
        "SUCCESS",
        t0 + 3 * 3600 + 1,
        t0 + 3 * 3600 + 10,
        attempts=2,
        spans=[
            Span("forward", 1, t0 + 3, t0 + 8, "INTERRUPTED"),
            Span("forward", 2, t0 + 3 * 3600 + 1, t0 + 3 * 3600 + 10, "SUCCESS"),
        ],
    )
    build.steps = [vifs, resume]
    a = ExternalEvent(1, t0 + 5, "network-vif-plugged", "port-a", "completed")
    b = ExternalEvent(2, t0 + 3 * 3600 + 9, "network-vif-plugged", "port-b", "failed")
    build.external_events = [a, b]
    build.waits = [
        EventWait(
            "vifs", "network-vif-plugged", ["port-a", "port-b"], t0 + 2, {"port-a": a, "port-b": b}
        )
    ]
    build.interruptions = [
        Interruption(
            at=t0 + 3 * 3600,
            last_seen=t0 + 8,
            during="RUNNING",
            steps=["resume"],
            after="vifs",
            resumed_at=t0 + 3 * 3600 + 1,
            resumed_as="RUNNING",
        )
    ]
    build.last_event_at = build.updated_at
    return build


def test_interruption_wait_and_broken_axis():
    svg = etree.fromstring(render_svg(crafted(), vif_plugging_timeout=300, now=1_700_020_000.0))
    classes = [e.get("class") or "" for e in svg.iter()]
    assert "interruption" in classes
    (band,) = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "interruption"]
    (wait,) = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "wait"]
    arrivals = [ln for ln in svg.iter(f"{SVG}line") if "arrival" in (ln.get("class") or "")]
    assert sorted(ln.get("data-tag") for ln in arrivals) == ["port-a", "port-b"]
    assert any("failed" in ln.get("class") for ln in arrivals)
    assert [ln for ln in svg.iter(f"{SVG}line") if ln.get("class") == "deadline"]
    # The 3-hour agent-down gap is drawn shortened, so the steps stay readable.
    (gap,) = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "break"]
    notes = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "note"]
    assert any("not to scale" in n for n in notes)
    width = float(svg.get("width"))
    assert float(gap.get("width")) < width / 10
    cut, done = bars(svg, "resume", "forward")
    assert cut.get("data-outcome") == "INTERRUPTED" and "interrupted" in cut.get("class")
    assert done.get("data-outcome") == "SUCCESS"
    assert float(band.get("x")) < float(done.get("x"))
    assert float(wait.get("width")) > 20


def test_scale_maps_monotonically_with_breaks():
    scale = Scale(0.0, 1000.0, 100.0, 900.0, [(10.0, 990.0)])
    xs = [scale.x(t) for t in (0, 5, 10, 500, 990, 995, 1000)]
    assert xs == sorted(xs) and xs[0] == 100.0 and abs(xs[-1] - 900.0) < 1e-6
    assert len(scale.breaks) == 1 and scale.ticks()


def test_styles_are_only_in_the_stylesheet(rolled_back):
    """Colours, fonts and strokes come from CSS classes, none from presentation attributes."""
    svg = etree.fromstring(render_svg(crafted(), vif_plugging_timeout=300, now=1_700_020_000.0))
    presentation = {"fill", "stroke", "stroke-dasharray", "stroke-width", "font-size"}
    presentation |= {"font-weight", "font-style", "text-anchor", "fill-opacity", "style"}
    for node in svg.iter():
        assert not presentation & set(node.attrib), (node.tag, dict(node.attrib))
    for css in ("forward.success", "revert.reverted", "bar.interrupted", "arrival.completed"):
        assert f".{css} " in CSS


def test_layout_is_data_the_writer_draws(rolled_back):
    chart = layout(rolled_back, now=rolled_back.updated_at)
    assert [lane.data["step"] for lane in chart.steps] == STEPS
    volumes = chart.steps[STEPS.index("volumes")]
    assert [bar.css for bar in volumes.bars] == ["bar forward failure", "bar revert reverted"]
    assert all(bar.box.x >= 170 and bar.box.width >= 2 for lane in chart.steps for bar in lane.bars)
    # Lanes stack down the chart: the lifecycle, then one per step.
    tops = [chart.lifecycle.bars[0].box.y] + [lane.bars[0].box.y for lane in chart.steps[:4]]
    assert tops == sorted(tops) and tops[-1] < chart.height
