"""A build's timeline as a Gantt chart: a standalone SVG, or an HTML page around it.

One row per step: forward runs (green, red when they failed), reverts (orange,
purple when the revert failed), runs cut by an agent crash (grey, dashed);
above them the build's lifecycle states; below them each event wait (from the
``vifs`` step's ``waiting_since`` to the last expected event, with a tick per
event and the deadline); interruptions shade the whole chart. A gap in which
the agent was down for long is drawn shortened (marked "not to scale").

Everything is built as lxml elements (step names and errors may hold ``<&'``)
and is self-contained: inline CSS plus presentation attributes, native
``<title>`` tooltips, no script, no external resource.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from lxml import etree

from spawnflow.cmd.formatting import clock, clock_ms, human, safe, seconds, stamp, took
from spawnflow.persistence import lifecycle
from spawnflow.persistence.history import (
    FORWARD,
    INTERRUPTED,
    BuildHistory,
    Span,
    StepHistory,
)

SVG_NS = "http://www.w3.org/2000/svg"
WIDTH = 960
LABEL_W = 170
RIGHT = 70
ROW_H = 24
BAR_H = 14
TOP = 78
AXIS_H = 22
BREAK_W = 36
MIN_BAR = 2.0

COLOURS = {
    ("forward", "SUCCESS"): "#43a047",
    ("forward", "FAILURE"): "#e53935",
    ("forward", INTERRUPTED): "#9e9e9e",
    ("forward", None): "#1e88e5",
    ("revert", "REVERTED"): "#fb8c00",
    ("revert", "REVERT_FAILURE"): "#8e24aa",
    ("revert", INTERRUPTED): "#bcaaa4",
    ("revert", None): "#ffb74d",
}
STATE_COLOURS = {
    lifecycle.QUEUED: "#cfd8dc",
    lifecycle.RUNNING: "#bbdefb",
    lifecycle.REVERTING: "#ffe0b2",
    lifecycle.INTERRUPTED: "#ffcdd2",
    lifecycle.ACTIVE: "#43a047",
    lifecycle.ROLLED_BACK: "#fb8c00",
    lifecycle.FAILED: "#e53935",
}
WAIT_COLOUR = "#b3e5fc"
CSS = """
svg.spawnflow-timeline { font-family: 'DejaVu Sans', Arial, Helvetica, sans-serif; }
.title { font-size: 16px; font-weight: bold; fill: #212121; }
.subtitle, .diagnosis { font-size: 12px; fill: #424242; }
.label { font-size: 12px; fill: #212121; }
.tick, .note, .duration { font-size: 10px; fill: #616161; }
.grid { stroke: #eeeeee; stroke-width: 1; }
.bar:hover, .wait:hover { stroke: #000000; stroke-width: 1; }
.legend { font-size: 11px; fill: #424242; }
"""


# -- time -> x --------------------------------------------------------------------------


@dataclass
class _Break:
    start: float
    end: float
    x: float | None = None


class Scale:
    """Seconds to pixels; long agent-down gaps become fixed-width breaks."""

    def __init__(self, t0: float, t1: float, x0: float, x1: float, gaps: list[tuple[float, float]]):
        self.t0, self.t1 = t0, max(t1, t0 + 1e-3)
        self.x0, self.x1 = x0, x1
        total = self.t1 - self.t0
        self.breaks = [
            _Break(a, b)
            for a, b in sorted(gaps)
            if b - a > max(0.25 * total, 10.0) and t0 <= a < b <= self.t1
        ]
        visible = total - sum(g.end - g.start for g in self.breaks)
        room = (x1 - x0) - BREAK_W * len(self.breaks)
        self.per_second = room / max(visible, 1e-6)
        for gap in self.breaks:
            gap.x = self._linear(gap.start)

    def _linear(self, ts: float) -> float:
        x, last = self.x0, self.t0
        for gap in self.breaks:
            if gap.x is not None and ts >= gap.start:
                x += (gap.start - last) * self.per_second + BREAK_W
                last = gap.end
        return x + (max(ts, last) - last) * self.per_second

    def x(self, ts: float) -> float:
        ts = min(max(ts, self.t0), self.t1)
        for gap in self.breaks:
            if gap.start <= ts <= gap.end:
                return gap.x + (ts - gap.start) / (gap.end - gap.start) * BREAK_W
        return min(self._linear(ts), self.x1)

    def ticks(self) -> list[float]:
        visible = (self.x1 - self.x0 - BREAK_W * len(self.breaks)) / self.per_second
        raw = visible / 8
        magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        out, last_x = [], -1e9
        n = 0
        while True:
            ts = self.t0 + n * step
            n += 1
            if ts > self.t1 + 1e-9:
                break
            if any(g.start < ts < g.end for g in self.breaks):
                continue
            x = self.x(ts)
            if x - last_x >= 48:
                out.append(ts)
                last_x = x
        return out


def _offset(delta: float) -> str:
    """``+0.25s``, ``+12s``, ``+2m05s``, ``+3h00m05s``: a tick's distance from the start."""
    whole = int(delta)
    frac = f"{delta - whole:.3f}".rstrip("0").rstrip(".")[1:]  # ".25" or ""
    if delta < 60:
        return f"+{whole}{frac}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"+{minutes}m{secs:02d}{frac}s"
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}h{minutes:02d}m{secs:02d}{frac}s"


# -- building the SVG -------------------------------------------------------------------


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: Any) -> Any:
    # Stored names and errors are escaped (safe): XML cannot carry most control
    # characters at all, and bidi or invisible ones would disguise the text.
    node = etree.SubElement(
        parent,
        f"{{{SVG_NS}}}{tag}",
        {
            k.rstrip("_").replace("__", ":").replace("_", "-"): _num(v)
            for k, v in attrs.items()
            if v is not None
        },
    )
    if text is not None:
        node.text = safe(text, keep="\n\t")
    return node


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return safe(value, keep="\n\t")


def _span_title(step: StepHistory, span: Span) -> str:
    phase = "run" if span.phase == FORWARD else "revert"
    end = clock_ms(span.end) if span.end is not None else "still running"
    text = (
        f"{step.name} {phase} #{span.attempt}: {clock_ms(span.start)} → {end}"
        f" ({seconds(span.duration) if span.duration is not None else 'open'})"
        f" {span.outcome or 'RUNNING'}"
    )
    error = step.error if span.phase == FORWARD else step.revert_error
    if error and span.outcome in ("FAILURE", "REVERT_FAILURE"):
        text += f"\n{error}"
    return text


def _window(build: BuildHistory, now: float, timeout: float | None) -> tuple[float, float]:
    t0 = build.created_at
    if build.lifecycle:
        t0 = min(t0, build.lifecycle[0].at)
    ends = [build.last_event_at or t0, build.updated_at]
    ends += [s.end for step in build.steps for s in step.spans if s.end is not None]
    if not build.is_final:
        ends.append(now)
        for wait in build.waits:
            if wait.outstanding and timeout is not None:
                ends.append(wait.since + timeout)
    return t0, max(ends)


def render_svg_element(
    build: BuildHistory,
    *,
    vif_plugging_timeout: float | None = None,
    diagnosis: str | None = None,
    now: float | None = None,
) -> etree._Element:
    now = time.time() if now is None else now
    t0, t1 = _window(build, now, vif_plugging_timeout)
    gaps = [
        (g.last_seen, g.resumed_at or (t1 if not build.is_final else g.at))
        for g in build.interruptions
    ]
    scale = Scale(t0, t1, LABEL_W, WIDTH - RIGHT, gaps)
    rows = 1 + len(build.steps) + len(build.waits)
    chart_top = TOP + AXIS_H
    chart_bottom = chart_top + rows * ROW_H
    height = chart_bottom + 72
    svg = etree.Element(f"{{{SVG_NS}}}svg", nsmap={None: SVG_NS})
    for key, value in {
        "width": WIDTH,
        "height": height,
        "viewBox": f"0 0 {WIDTH} {height}",
        "class": "spawnflow-timeline",
        "role": "img",
        "data-build": build.build_id,
        "data-state": build.state,
    }.items():
        svg.set(key, str(value))
    _el(svg, "title", f"spawnflow build {build.build_id}: {build.state}")
    _el(svg, "style", CSS)
    _el(svg, "rect", x=0, y=0, width=WIDTH, height=height, fill="#ffffff")

    # Header.
    _el(
        svg,
        "text",
        f"build {build.build_id} — {build.state}",
        x=12,
        y=22,
        class_="title",
        font_size=16,
        font_weight="bold",
        fill="#212121",
    )
    sub = (
        f"{build.instance_name} ({build.instance_uuid}) on {build.host}; created "
        f"{stamp(build.created_at)}"
    )
    if build.duration is not None:
        sub += f"; took {human(build.duration)}"
    _el(svg, "text", sub, x=12, y=42, class_="subtitle", font_size=12, fill="#424242")
    if diagnosis:
        fits = int((WIDTH - 24) / 6.9)  # characters of 12px text in the width
        line = _el(
            svg,
            "text",
            diagnosis if len(diagnosis) <= fits else diagnosis[: fits - 1] + "…",
            x=12,
            y=60,
            class_="diagnosis",
            font_size=12,
            fill="#424242",
        )
        _el(line, "title", diagnosis)

    # Axis and grid.
    axis = _el(svg, "g", class_="axis")
    for ts in scale.ticks():
        x = scale.x(ts)
        _el(
            axis,
            "line",
            x1=x,
            x2=x,
            y1=chart_top - 4,
            y2=chart_bottom,
            class_="grid",
            stroke="#eeeeee",
            stroke_width=1,
        )
        _el(
            axis,
            "text",
            _offset(ts - t0),
            x=x,
            y=chart_top - 8,
            class_="tick",
            font_size=10,
            fill="#616161",
            text_anchor="middle",
        )
    _el(
        axis,
        "text",
        f"{clock(t0)} UTC",
        x=LABEL_W - 18,
        y=chart_top - 8,
        class_="tick",
        font_size=10,
        fill="#616161",
        text_anchor="end",
    )
    for gap in scale.breaks:
        _el(
            axis,
            "rect",
            x=gap.x,
            y=chart_top - 4,
            width=BREAK_W,
            height=chart_bottom - chart_top + 4,
            fill="#fafafa",
            stroke="#bdbdbd",
            stroke_dasharray="3,3",
            class_="break",
        )
        _el(
            axis,
            "text",
            f"{took(gap.end - gap.start)} not to scale",
            x=gap.x + BREAK_W / 2,
            y=chart_bottom + 12,
            class_="note",
            font_size=10,
            fill="#616161",
            text_anchor="middle",
        )

    # Interruptions shade every row.
    for gap in build.interruptions:
        end = gap.resumed_at or (t1 if not build.is_final else gap.at)
        x0, x1 = scale.x(gap.last_seen), scale.x(end)
        group = _el(svg, "g", class_="interruption", data_during=gap.during)
        _el(
            group,
            "rect",
            x=x0,
            y=chart_top,
            width=max(x1 - x0, MIN_BAR),
            height=chart_bottom - chart_top,
            fill="#e53935",
            fill_opacity=0.08,
            stroke="#e53935",
            stroke_dasharray="4,3",
            class_="interruption",
        )
        _el(
            group,
            "title",
            f"agent down: last event {clock_ms(gap.last_seen)}, marked "
            f"INTERRUPTED {clock_ms(gap.at)}"
            + (f", {gap.resumed_as} {clock_ms(gap.resumed_at)}" if gap.resumed_at else "")
            + (f"; at step {', '.join(gap.steps)}" if gap.steps else ""),
        )
        _el(
            group,
            "text",
            "agent down",
            x=(x0 + x1) / 2,
            y=chart_bottom + 24,
            class_="note",
            font_size=10,
            fill="#c62828",
            text_anchor="middle",
        )

    # Lifecycle lane.
    y = chart_top
    lane = _el(svg, "g", class_="lifecycle")
    _el(
        lane,
        "text",
        "lifecycle",
        x=LABEL_W - 8,
        y=y + ROW_H / 2 + 4,
        class_="label",
        font_size=12,
        fill="#212121",
        text_anchor="end",
        font_style="italic",
    )
    for i, change in enumerate(build.lifecycle):
        start = change.at
        if lifecycle.is_final(change.to_state):
            x = scale.x(start)
            _el(
                lane,
                "path",
                d=f"M{x:.1f},{y + 5} l6,7 l-6,7 l-6,-7 z",
                fill=STATE_COLOURS.get(change.to_state, "#757575"),
                class_=f"state final {change.to_state.lower()}",
            )
            left = x + 10 + 7 * len(change.to_state) > WIDTH
            _el(
                lane,
                "text",
                change.to_state,
                x=x - 8 if left else x + 8,
                y=y + ROW_H / 2 + 4,
                class_="tick",
                font_size=10,
                fill="#212121",
                text_anchor="end" if left else None,
            )
            continue
        end = build.lifecycle[i + 1].at if i + 1 < len(build.lifecycle) else t1
        x0, x1 = scale.x(start), scale.x(end)
        seg = _el(
            lane,
            "rect",
            x=x0,
            y=y + 5,
            width=max(x1 - x0, MIN_BAR),
            height=BAR_H,
            fill=STATE_COLOURS.get(change.to_state, "#e0e0e0"),
            class_=f"state {change.to_state.lower()}",
            data_state=change.to_state,
        )
        _el(seg, "title", f"{change.to_state} from {clock_ms(start)}")
        if x1 - x0 > 8 * len(change.to_state) + 6:
            _el(
                lane,
                "text",
                change.to_state,
                x=x0 + 4,
                y=y + ROW_H / 2 + 4,
                class_="tick",
                font_size=10,
                fill="#37474f",
            )

    # Steps.
    for step in build.steps:
        y += ROW_H
        row = _el(svg, "g", class_="step", data_step=step.name, data_state=step.state)
        _el(
            row,
            "text",
            step.name,
            x=LABEL_W - 8,
            y=y + ROW_H / 2 + 4,
            class_="label",
            font_size=12,
            fill="#212121",
            text_anchor="end",
        )
        last_x = None
        for span in step.spans:
            end = span.end if span.end is not None else (now if not build.is_final else t1)
            x0, x1 = scale.x(span.start), scale.x(end)
            colour = COLOURS.get((span.phase, span.outcome), "#757575")
            outcome = (span.outcome or "running").lower()
            bar = _el(
                row,
                "rect",
                x=x0,
                y=y + 5,
                width=max(x1 - x0, MIN_BAR),
                height=BAR_H,
                fill=colour,
                rx=2,
                stroke="#424242" if span.end is None or span.outcome == INTERRUPTED else None,
                stroke_dasharray="3,2" if span.end is None or span.outcome == INTERRUPTED else None,
                class_=f"bar {span.phase} {outcome}",
                data_step=step.name,
                data_phase=span.phase,
                data_outcome=span.outcome or "RUNNING",
                data_attempt=span.attempt,
            )
            _el(bar, "title", _span_title(step, span))
            last_x = max(last_x or 0, x0 + max(x1 - x0, MIN_BAR))
        if last_x is not None:
            label = took(step.duration) if step.duration is not None else ""
            if step.revert_duration is not None:
                label += f" ↩{took(step.revert_duration)}"
            if label.strip():
                _el(
                    row,
                    "text",
                    label.strip(),
                    x=min(last_x + 4, WIDTH - RIGHT + 4),
                    y=y + ROW_H / 2 + 4,
                    class_="duration",
                    font_size=10,
                    fill="#616161",
                )

    # Event waits.
    for wait in build.waits:
        y += ROW_H
        row = _el(svg, "g", class_="event-wait", data_step=wait.step, data_event=wait.name)
        _el(
            row,
            "text",
            f"{wait.name} ({len(wait.tags)})",
            x=LABEL_W - 8,
            y=y + ROW_H / 2 + 4,
            class_="label",
            font_size=11,
            fill="#01579b",
            text_anchor="end",
        )
        done = wait.completed_at
        end = done if done is not None else (now if not build.is_final else build.updated_at)
        x0, x1 = scale.x(wait.since), scale.x(max(end, wait.since))
        bar = _el(
            row,
            "rect",
            x=x0,
            y=y + 7,
            width=max(x1 - x0, MIN_BAR),
            height=BAR_H - 4,
            fill=WAIT_COLOUR,
            stroke="#0288d1",
            stroke_width=0.5,
            class_="wait",
            data_outstanding=len(wait.outstanding),
        )
        _el(
            bar,
            "title",
            f"{wait.name} for {', '.join(wait.tags)} expected from "
            f"{clock_ms(wait.since)}"
            + (
                f"; all in at {clock_ms(done)}"
                if done
                else f"; still missing {', '.join(wait.outstanding)}"
            ),
        )
        for tag, event in wait.received.items():
            x = scale.x(event.at)
            colour = "#2e7d32" if event.status == "completed" else "#c62828"
            tick = _el(
                row,
                "line",
                x1=x,
                x2=x,
                y1=y + 3,
                y2=y + ROW_H - 3,
                stroke=colour,
                stroke_width=2,
                class_=f"arrival {event.status}",
                data_tag=tag,
            )
            _el(tick, "title", f"{event.name} {event.status} for {tag} at {clock_ms(event.at)}")
        if vif_plugging_timeout is not None:
            deadline = wait.since + vif_plugging_timeout
            if deadline <= t1:
                x = scale.x(deadline)
                mark = _el(
                    row,
                    "line",
                    x1=x,
                    x2=x,
                    y1=y + 1,
                    y2=y + ROW_H - 1,
                    stroke="#c62828",
                    stroke_dasharray="2,2",
                    class_="deadline",
                )
                _el(
                    mark,
                    "title",
                    f"deadline {clock_ms(deadline)} "
                    f"(waiting_since + vif_plugging_timeout {vif_plugging_timeout}s)",
                )

    # Legend.
    legend = _el(svg, "g", class_="legend")
    x, ly = 12.0, chart_bottom + 48
    entries = [
        ("run", COLOURS[("forward", "SUCCESS")]),
        ("failed run", COLOURS[("forward", "FAILURE")]),
        ("revert", COLOURS[("revert", "REVERTED")]),
        ("failed revert", COLOURS[("revert", "REVERT_FAILURE")]),
        ("cut by crash", COLOURS[("forward", INTERRUPTED)]),
        ("running", COLOURS[("forward", None)]),
        ("event wait", WAIT_COLOUR),
    ]
    for text, colour in entries:
        _el(legend, "rect", x=x, y=ly - 10, width=12, height=12, fill=colour)
        _el(legend, "text", text, x=x + 16, y=ly, class_="legend", font_size=11, fill="#424242")
        x += 24 + 7 * len(text)
    _el(
        legend,
        "text",
        f"times UTC; rendered {stamp(now)}",
        x=WIDTH - 12,
        y=ly,
        class_="legend",
        font_size=11,
        fill="#9e9e9e",
        text_anchor="end",
    )
    return svg


def render_svg(build: BuildHistory, **options: Any) -> bytes:
    """A standalone SVG document (UTF-8 bytes)."""
    svg = render_svg_element(build, **options)
    return etree.tostring(svg, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# -- HTML -------------------------------------------------------------------------------

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


def _h(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> Any:
    node = etree.SubElement(
        parent, tag, {k.rstrip("_"): safe(v, keep="\n\t") for k, v in attrs.items()}
    )
    if text is not None:
        node.text = safe(text, keep="\n\t")
    return node


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
    pairs = [
        ("instance", f"{build.instance_name} ({build.instance_uuid})"),
        ("host", build.host),
        ("created", stamp(build.created_at)),
        ("lifecycle", " → ".join(f"{t.to_state} {clock(t.at)}" for t in build.lifecycle)),
    ]
    if build.duration is not None:
        pairs.append(("took", human(build.duration)))
    if build.error:
        pairs.append(("error", build.error))
    for gap in build.interruptions:
        pairs.append(
            (
                "interrupted",
                f"at {', '.join(gap.steps) or 'between steps'}; last "
                f"event {clock_ms(gap.last_seen)}; {gap.resumed_as or 'not resumed'} "
                f"{clock_ms(gap.resumed_at) if gap.resumed_at else ''}".strip(),
            )
        )
    for key, value in pairs:
        _h(facts, "dt", key)
        _h(facts, "dd", value)
    if diagnosis:
        _h(body, "p", diagnosis, class_="diagnosis")
    chart = _h(body, "div", class_="chart")
    chart.append(
        render_svg_element(
            build, vif_plugging_timeout=vif_plugging_timeout, diagnosis=None, now=now
        )
    )
    table = _h(body, "table", class_="steps")
    header = _h(_h(table, "thead"), "tr")
    for name in ("Step", "State", "Start", "End", "Took", "Revert", "Attempts", "Error"):
        _h(header, "th", name)
    rows = _h(table, "tbody")
    for step in build.steps:
        tr = _h(rows, "tr", class_=step.state.lower())
        cells = [
            step.name,
            step.state,
            clock_ms(step.started_at),
            clock_ms(step.ended_at),
            seconds(step.duration),
            seconds(step.revert_duration),
            str(step.attempts),
            "\n".join(e for e in (step.error, step.revert_error) if e),
        ]
        for i, cell in enumerate(cells):
            _h(tr, "td", cell, **({"class_": "num"} if i in (4, 5, 6) else {}))
    _h(
        body,
        "p",
        f"Times are UTC. Rendered {stamp(now)} from the spawnflow event log; "
        "hover a bar for its details.",
        class_="note",
    )
    return etree.tostring(html, method="html", encoding="UTF-8", doctype="<!DOCTYPE html>")


__all__ = ["Scale", "render_html", "render_svg", "render_svg_element"]
