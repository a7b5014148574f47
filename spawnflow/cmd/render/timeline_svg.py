"""A build's timeline as a standalone SVG: writes out what ``timeline_layout`` placed.

Everything is built as lxml elements (step names and errors may hold ``<&'``)
and is self-contained: one ``<style>`` (``CSS``, the only place any colour,
font or stroke is given; elements carry class names), native ``<title>``
tooltips, no script, no external resource.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from spawnflow.cmd.render.text import safe
from spawnflow.cmd.render.timeline_layout import Bar, Label, Lane, Layout, Mark, layout
from spawnflow.history import BuildHistory

SVG_NS = "http://www.w3.org/2000/svg"

# Every style of the chart; the HTML page embeds the same rules.
CSS = """
svg.spawnflow-timeline { font-family: 'DejaVu Sans', Arial, Helvetica, sans-serif; }
.background { fill: #ffffff; }
.title { font-size: 16px; font-weight: bold; fill: #212121; }
.subtitle, .diagnosis { font-size: 12px; fill: #424242; }
.label { font-size: 12px; fill: #212121; text-anchor: end; }
.lifecycle .label { font-style: italic; }
.event-wait .label { font-size: 11px; fill: #01579b; }
.tick, .note, .duration, .state-label { font-size: 10px; fill: #616161; }
.tick, .note { text-anchor: middle; }
.tick.origin, .state-label.left { text-anchor: end; }
.note.down { fill: #c62828; }
.state-label { fill: #37474f; }
.state-label.final { fill: #212121; }
.grid { stroke: #eeeeee; stroke-width: 1; }
.break { fill: #fafafa; stroke: #bdbdbd; stroke-dasharray: 3,3; }
rect.interruption { fill: #e53935; fill-opacity: 0.08; stroke: #e53935; stroke-dasharray: 4,3; }
.state { fill: #e0e0e0; }
.state.final { fill: #757575; }
.state.queued { fill: #cfd8dc; }
.state.running { fill: #bbdefb; }
.state.reverting { fill: #ffe0b2; }
.state.interrupted { fill: #ffcdd2; }
.state.active { fill: #43a047; }
.state.rolled_back { fill: #fb8c00; }
.state.failed { fill: #e53935; }
.bar { fill: #757575; }
.bar.open, .bar.interrupted { stroke: #424242; stroke-dasharray: 3,2; }
.forward.success { fill: #43a047; }
.forward.failure { fill: #e53935; }
.forward.interrupted { fill: #9e9e9e; }
.forward.running { fill: #1e88e5; }
.revert.reverted { fill: #fb8c00; }
.revert.revert_failure { fill: #8e24aa; }
.revert.interrupted { fill: #bcaaa4; }
.revert.running { fill: #ffb74d; }
.wait, .swatch.waiting { fill: #b3e5fc; }
.wait { stroke: #0288d1; stroke-width: 0.5; }
.bar:hover, .wait:hover { stroke: #000000; stroke-width: 1; }
.arrival { stroke: #c62828; stroke-width: 2; }
.arrival.completed { stroke: #2e7d32; }
.deadline { stroke: #c62828; stroke-dasharray: 2,2; }
.legend { font-size: 11px; fill: #424242; }
.legend.rendered { fill: #9e9e9e; text-anchor: end; }
"""


def _el(parent: Any, tag: str, text: str | None = None, /, **attrs: Any) -> Any:
    # Stored names and errors are escaped (safe): XML cannot carry most control
    # characters at all, and bidi or invisible ones would disguise the text.
    node = etree.SubElement(
        parent,
        f"{{{SVG_NS}}}{tag}",
        {key: _num(value) for key, value in attrs.items() if value is not None},
    )
    if text is not None:
        node.text = safe(text, keep="\n\t")
    return node


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return safe(value, keep="\n\t")


def _data(data: dict[str, str | int]) -> dict[str, str | int]:
    return {f"data-{key}": value for key, value in data.items()}


def _label(parent: Any, label: Label) -> None:
    node = _el(parent, "text", label.text, x=label.x, y=label.y, **{"class": label.css})
    if label.title is not None:
        _el(node, "title", label.title)


def _bar(parent: Any, bar: Bar, **geometry: float) -> None:
    box = bar.box
    attrs = {"x": box.x, "y": box.y, "width": box.width, "height": box.height, **geometry}
    node = _el(parent, "rect", **attrs, **{"class": bar.css}, **_data(bar.data))
    if bar.title is not None:
        _el(node, "title", bar.title)


def _mark(parent: Any, mark: Mark) -> None:
    attrs = {"x1": mark.x, "x2": mark.x, "y1": mark.y1, "y2": mark.y2, "class": mark.css}
    node = _el(parent, "line", **attrs, **_data(mark.data))
    if mark.title is not None:
        _el(node, "title", mark.title)


def _lane(parent: Any, lane: Lane, rounded: bool = False) -> None:
    group = _el(parent, "g", **{"class": lane.css}, **_data(lane.data))
    if lane.label is not None:
        _label(group, lane.label)
    for diamond in lane.diamonds:
        path = f"M{diamond.x:.1f},{diamond.y} l6,7 l-6,7 l-6,-7 z"
        _el(group, "path", d=path, **{"class": diamond.css})
    for bar in lane.bars:
        _bar(group, bar, **({"rx": 2.0} if rounded else {}))
    for mark in lane.marks:
        _mark(group, mark)
    if lane.title is not None:
        _el(group, "title", lane.title)
    for note in lane.notes:
        _label(group, note)


def svg_element(chart: Layout) -> Any:
    """The ``<svg>`` element of a laid-out chart."""
    svg = etree.Element(f"{{{SVG_NS}}}svg", nsmap={None: SVG_NS})
    for key, value in {
        "width": chart.width,
        "height": chart.height,
        "viewBox": f"0 0 {chart.width} {chart.height}",
        "class": "spawnflow-timeline",
        "role": "img",
        "data-build": chart.build_id,
        "data-state": chart.state,
    }.items():
        svg.set(key, str(value))
    _el(svg, "title", f"spawnflow build {chart.build_id}: {chart.state}")
    _el(svg, "style", CSS)
    _el(svg, "rect", x=0, y=0, width=chart.width, height=chart.height, **{"class": "background"})
    for label in chart.header:
        _label(svg, label)
    _lane(svg, chart.axis)
    for band in chart.interruptions:
        _lane(svg, band)
    _lane(svg, chart.lifecycle)
    for step in chart.steps:
        _lane(svg, step, rounded=True)
    for wait in chart.waits:
        _lane(svg, wait)
    _lane(svg, chart.legend)
    return svg


def render_svg(build: BuildHistory, **options: Any) -> bytes:
    """A standalone SVG document (UTF-8 bytes); ``options`` as ``timeline_layout.layout``."""
    svg = svg_element(layout(build, **options))
    data: bytes = etree.tostring(svg, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return data


__all__ = ["CSS", "render_svg", "svg_element"]
