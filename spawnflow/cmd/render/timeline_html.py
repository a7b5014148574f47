"""A build's timeline as a self-contained HTML page: summary, diagnosis, chart, steps.

The chart is the SVG of ``timeline_svg`` inline; the page's own styles sit
beside the chart's in one ``<style>``. No script, no external resource.
"""

from __future__ import annotations

import time
from typing import Any

from lxml import etree

from spawnflow.cmd.render.text import safe
from spawnflow.cmd.render.timeline_layout import layout
from spawnflow.cmd.render.timeline_svg import CSS, svg_element
from spawnflow.cmd.render.times import Duration, Stamp, duration, timestamp
from spawnflow.history import BuildHistory

PAGE_CSS = """
body { font-family: 'DejaVu Sans', Arial, Helvetica, sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 20px; margin: 0 0 8px 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 13px; }
dt { font-weight: bold; } dd { margin: 0; }
p.diagnosis { background: #fff8e1; border-left: 4px solid #ffb300; padding: 8px 12px; }
table { border-collapse: collapse; font-size: 12px; margin-top: 16px; }
th, td { border: 1px solid #e0e0e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; }
tr.failure td, tr.revert_failure td { background: #ffebee; }
.chart { overflow-x: auto; margin-top: 12px; }
"""
STEP_COLUMNS = ("Step", "State", "Start", "End", "Took", "Revert", "Attempts", "Error")
NUMERIC = frozenset({"Took", "Revert", "Attempts"})


def _h(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
    node = etree.SubElement(
        parent, tag, {k.rstrip("_"): safe(v, keep="\n\t") for k, v in attrs.items()}
    )
    if text is not None:
        node.text = safe(text, keep="\n\t")
    return node


def _facts(build: BuildHistory) -> list[tuple[str, str]]:
    lifecycle = " → ".join(f"{t.to_state} {timestamp(t.at, Stamp.CLOCK)}" for t in build.lifecycle)
    pairs = [
        ("instance", f"{build.instance_name} ({build.instance_uuid})"),
        ("host", build.host),
        ("created", timestamp(build.created_at)),
        ("lifecycle", lifecycle),
    ]
    if build.duration is not None:
        pairs.append(("took", duration(build.duration)))
    if build.error:
        pairs.append(("error", build.error))
    for gap in build.interruptions:
        resumed = timestamp(gap.resumed_at, Stamp.CLOCK_MS) if gap.resumed_at else ""
        text = (
            f"at {', '.join(gap.steps) or 'between steps'}; last "
            f"event {timestamp(gap.last_seen, Stamp.CLOCK_MS)}; "
            f"{gap.resumed_as or 'not resumed'} {resumed}"
        )
        pairs.append(("interrupted", text.strip()))
    return pairs


def _step_table(body: Any, build: BuildHistory) -> None:
    table = _h(body, "table", class_="steps")
    header = _h(_h(table, "thead"), "tr")
    for name in STEP_COLUMNS:
        _h(header, "th", name)
    rows = _h(table, "tbody")
    for step in build.steps:
        tr = _h(rows, "tr", class_=step.state.lower())
        cells = [
            step.name,
            step.state,
            timestamp(step.started_at, Stamp.CLOCK_MS),
            timestamp(step.ended_at, Stamp.CLOCK_MS),
            duration(step.duration, Duration.SECONDS),
            duration(step.revert_duration, Duration.SECONDS),
            str(step.attempts),
            "\n".join(e for e in (step.error, step.revert_error) if e),
        ]
        for column, cell in zip(STEP_COLUMNS, cells, strict=True):
            _h(tr, "td", cell, **({"class_": "num"} if column in NUMERIC else {}))


def render_html(
    build: BuildHistory,
    *,
    vif_plugging_timeout: float | None = None,
    diagnosis: str | None = None,
    now: float | None = None,
) -> bytes:
    """A self-contained HTML page: summary, diagnosis, the SVG chart and the step table."""
    now = time.time() if now is None else now
    html = etree.Element("html", lang="en")
    head = _h(html, "head")
    _h(head, "meta", charset="utf-8")
    _h(head, "title", f"spawnflow build {build.build_id} ({build.state})")
    _h(head, "style", PAGE_CSS + CSS)
    body = _h(html, "body")
    _h(body, "h1", f"build {build.build_id} — {build.state}")
    facts = _h(body, "dl")
    for key, value in _facts(build):
        _h(facts, "dt", key)
        _h(facts, "dd", value)
    if diagnosis:
        _h(body, "p", diagnosis, class_="diagnosis")
    chart = _h(body, "div", class_="chart")
    # The diagnosis is in the page above; the chart leaves it out.
    chart.append(svg_element(layout(build, vif_plugging_timeout=vif_plugging_timeout, now=now)))
    _step_table(body, build)
    _h(
        body,
        "p",
        f"Times are UTC. Rendered {timestamp(now)} from the spawnflow event log; "
        "hover a bar for its details.",
        class_="note",
    )
    page: bytes = etree.tostring(html, method="html", encoding="UTF-8", doctype="<!DOCTYPE html>")
    return page


__all__ = ["render_html"]
