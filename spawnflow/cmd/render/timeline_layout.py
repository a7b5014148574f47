"""Where everything of a build's Gantt chart goes: lanes, boxes and labels as data.

One lane per step: forward runs and reverts as bars, classed by phase and
outcome (their colours are the writer's business); above them the build's
lifecycle states; below them each event wait (from the ``vifs`` step's
``waiting_since`` to the last expected event, with a mark per event and the
deadline); interruptions shade the whole chart. A gap in which the agent was
down for long is drawn shortened (marked "not to scale").

Nothing here knows SVG: ``layout`` returns a ``Layout`` (pixels, texts, CSS
class names and ``data-*`` attributes), which ``timeline_svg`` writes out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from spawnflow.cmd.render.timeline_scale import BREAK_W, Scale
from spawnflow.cmd.render.times import Duration, Stamp, duration, timestamp
from spawnflow.history import (
    FORWARD,
    BuildHistory,
    EventWait,
    Span,
    StepHistory,
    lifecycle,
)

WIDTH = 960
LABEL_W = 170
RIGHT = 70
ROW_H = 24
BAR_H = 14
TOP = 78
AXIS_H = 22
MIN_BAR = 2.0
TEXT_DY = ROW_H / 2 + 4  # baseline of a lane's text, from the lane's top

Data = dict[str, str | int]


# -- the layout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Label:
    """A text at (x, y): its baseline, anchored as its CSS class says."""

    x: float
    y: float
    text: str
    css: str
    title: str | None = None  # the tooltip: the whole text when it is shortened


@dataclass(frozen=True)
class Bar:
    box: Box
    css: str
    title: str | None = None
    data: Data = field(default_factory=dict)


@dataclass(frozen=True)
class Mark:
    """A vertical line at x: a grid line, an event's arrival, a deadline."""

    x: float
    y1: float
    y2: float
    css: str
    title: str | None = None
    data: Data = field(default_factory=dict)


@dataclass(frozen=True)
class Diamond:
    """A final lifecycle state, at the moment it was reached."""

    x: float
    y: float
    css: str


@dataclass
class Lane:
    """One row of the chart (the lifecycle, a step, an event wait) or a chart-wide layer."""

    css: str
    data: Data = field(default_factory=dict)
    label: Label | None = None
    title: str | None = None
    diamonds: list[Diamond] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    notes: list[Label] = field(default_factory=list)


@dataclass
class Layout:
    width: float
    height: float
    build_id: str
    state: str
    header: list[Label]
    axis: Lane
    interruptions: list[Lane]
    lifecycle: Lane
    steps: list[Lane]
    waits: list[Lane]
    legend: Lane


# Legend entries: text and the CSS classes that colour its swatch like the bars.
LEGEND = [
    ("run", "forward success"),
    ("failed run", "forward failure"),
    ("revert", "revert reverted"),
    ("failed revert", "revert revert_failure"),
    ("cut by crash", "forward interrupted"),
    ("running", "forward running"),
    ("event wait", "waiting"),
]


@dataclass(frozen=True)
class _Frame:
    """What every lane needs: the time scale and where the chart sits."""

    build: BuildHistory
    scale: Scale
    t0: float
    t1: float
    now: float
    top: float  # of the first lane (the lifecycle)
    bottom: float  # of the last lane

    def open_end(self) -> float:
        """Where a span that has not ended is drawn to."""
        return self.now if not self.build.is_final else self.t1


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


def layout(
    build: BuildHistory,
    *,
    vif_plugging_timeout: float | None = None,
    diagnosis: str | None = None,
    now: float | None = None,
) -> Layout:
    """Lay out ``build``'s chart (``now``: when an unfinished build is drawn to)."""
    now = time.time() if now is None else now
    t0, t1 = _window(build, now, vif_plugging_timeout)
    gaps = [(g.last_seen, _gap_end(build, g.resumed_at, g.at, t1)) for g in build.interruptions]
    top = TOP + AXIS_H
    bottom = top + (1 + len(build.steps) + len(build.waits)) * ROW_H
    frame = _Frame(build, Scale(t0, t1, LABEL_W, WIDTH - RIGHT, gaps), t0, t1, now, top, bottom)
    steps = [_step_lane(frame, step, top + (i + 1) * ROW_H) for i, step in enumerate(build.steps)]
    first_wait = top + (1 + len(build.steps)) * ROW_H
    waits = [
        _wait_lane(frame, wait, first_wait + i * ROW_H, vif_plugging_timeout)
        for i, wait in enumerate(build.waits)
    ]
    return Layout(
        width=WIDTH,
        height=bottom + 72,
        build_id=build.build_id,
        state=build.state,
        header=_header(build, diagnosis),
        axis=_axis(frame),
        interruptions=_interruptions(frame),
        lifecycle=_lifecycle_lane(frame),
        steps=steps,
        waits=waits,
        legend=_legend(bottom + 48, now),
    )


def _gap_end(build: BuildHistory, resumed_at: float | None, marked: float, t1: float) -> float:
    return resumed_at or (t1 if not build.is_final else marked)


def _header(build: BuildHistory, diagnosis: str | None) -> list[Label]:
    sub = (
        f"{build.instance_name} ({build.instance_uuid}) on {build.host}; created "
        f"{timestamp(build.created_at)}"
    )
    if build.duration is not None:
        sub += f"; took {duration(build.duration)}"
    header = [
        Label(12, 22, f"build {build.build_id} — {build.state}", "title"),
        Label(12, 42, sub, "subtitle"),
    ]
    if diagnosis:
        fits = int((WIDTH - 24) / 6.9)  # characters of 12px text in the width
        shown = diagnosis if len(diagnosis) <= fits else diagnosis[: fits - 1] + "…"
        header.append(Label(12, 60, shown, "diagnosis", title=diagnosis))
    return header


def _axis(frame: _Frame) -> Lane:
    axis = Lane("axis")
    for ts in frame.scale.ticks():
        x = frame.scale.x(ts)
        axis.marks.append(Mark(x, frame.top - 4, frame.bottom, "grid"))
        axis.notes.append(Label(x, frame.top - 8, duration(ts - frame.t0, Duration.OFFSET), "tick"))
    origin = f"{timestamp(frame.t0, Stamp.CLOCK)} UTC"
    axis.notes.append(Label(LABEL_W - 18, frame.top - 8, origin, "tick origin"))
    for gap in frame.scale.breaks:
        height = frame.bottom - frame.top + 4
        axis.bars.append(Bar(Box(gap.x, frame.top - 4, BREAK_W, height), "break"))
        note = f"{duration(gap.end - gap.start, Duration.COLUMN)} not to scale"
        axis.notes.append(Label(gap.x + BREAK_W / 2, frame.bottom + 12, note, "note"))
    return axis


def _interruptions(frame: _Frame) -> list[Lane]:
    bands = []
    for gap in frame.build.interruptions:
        end = _gap_end(frame.build, gap.resumed_at, gap.at, frame.t1)
        x0, x1 = frame.scale.x(gap.last_seen), frame.scale.x(end)
        title = (
            f"agent down: last event {timestamp(gap.last_seen, Stamp.CLOCK_MS)}, marked "
            f"INTERRUPTED {timestamp(gap.at, Stamp.CLOCK_MS)}"
        )
        if gap.resumed_at:
            title += f", {gap.resumed_as} {timestamp(gap.resumed_at, Stamp.CLOCK_MS)}"
        if gap.steps:
            title += f"; at step {', '.join(gap.steps)}"
        band = Lane("interruption", data={"during": gap.during} if gap.during else {})
        band.title = title
        box = Box(x0, frame.top, max(x1 - x0, MIN_BAR), frame.bottom - frame.top)
        band.bars.append(Bar(box, "interruption"))
        band.notes.append(Label((x0 + x1) / 2, frame.bottom + 24, "agent down", "note down"))
        bands.append(band)
    return bands


def _lifecycle_lane(frame: _Frame) -> Lane:
    y = frame.top
    lane = Lane("lifecycle", label=Label(LABEL_W - 8, y + TEXT_DY, "lifecycle", "label"))
    changes = frame.build.lifecycle
    for i, change in enumerate(changes):
        state = change.to_state
        if lifecycle.is_final(state):
            x = frame.scale.x(change.at)
            lane.diamonds.append(Diamond(x, y + 5, f"state final {state.lower()}"))
            left = x + 10 + 7 * len(state) > WIDTH
            shown = Label(x - 8, y + TEXT_DY, state, "state-label final left")
            lane.notes.append(
                shown if left else Label(x + 8, y + TEXT_DY, state, "state-label final")
            )
            continue
        end = changes[i + 1].at if i + 1 < len(changes) else frame.t1
        x0, x1 = frame.scale.x(change.at), frame.scale.x(end)
        box = Box(x0, y + 5, max(x1 - x0, MIN_BAR), BAR_H)
        title = f"{state} from {timestamp(change.at, Stamp.CLOCK_MS)}"
        lane.bars.append(Bar(box, f"state {state.lower()}", title, {"state": state}))
        if x1 - x0 > 8 * len(state) + 6:
            lane.notes.append(Label(x0 + 4, y + TEXT_DY, state, "state-label"))
    return lane


def _span_title(step: StepHistory, span: Span) -> str:
    phase = "run" if span.phase == FORWARD else "revert"
    end = timestamp(span.end, Stamp.CLOCK_MS) if span.end is not None else "still running"
    took = duration(span.duration, Duration.SECONDS) if span.duration is not None else "open"
    text = (
        f"{step.name} {phase} #{span.attempt}: {timestamp(span.start, Stamp.CLOCK_MS)} → {end}"
        f" ({took}) {span.outcome or 'RUNNING'}"
    )
    error = step.error if span.phase == FORWARD else step.revert_error
    if error and span.outcome in ("FAILURE", "REVERT_FAILURE"):
        text += f"\n{error}"
    return text


def _span_bar(frame: _Frame, step: StepHistory, span: Span, y: float) -> Bar:
    end = span.end if span.end is not None else frame.open_end()
    x0, x1 = frame.scale.x(span.start), frame.scale.x(end)
    outcome = (span.outcome or "running").lower()
    still_open = " open" if span.end is None else ""  # drawn dashed, like an interrupted run
    data: Data = {
        "step": step.name,
        "phase": span.phase,
        "outcome": span.outcome or "RUNNING",
        "attempt": span.attempt,
    }
    box = Box(x0, y + 5, max(x1 - x0, MIN_BAR), BAR_H)
    return Bar(box, f"bar {span.phase} {outcome}{still_open}", _span_title(step, span), data)


def _step_lane(frame: _Frame, step: StepHistory, y: float) -> Lane:
    lane = Lane(
        "step",
        data={"step": step.name, "state": step.state},
        label=Label(LABEL_W - 8, y + TEXT_DY, step.name, "label"),
    )
    lane.bars = [_span_bar(frame, step, span, y) for span in step.spans]
    if not lane.bars:
        return lane
    right = max(bar.box.x + bar.box.width for bar in lane.bars)
    text = duration(step.duration, Duration.COLUMN) if step.duration is not None else ""
    if step.revert_duration is not None:
        text += f" ↩{duration(step.revert_duration, Duration.COLUMN)}"
    if text.strip():
        x = min(right + 4, WIDTH - RIGHT + 4)
        lane.notes.append(Label(x, y + TEXT_DY, text.strip(), "duration"))
    return lane


def _wait_lane(frame: _Frame, wait: EventWait, y: float, timeout: float | None) -> Lane:
    lane = Lane(
        "event-wait",
        data={"step": wait.step, "event": wait.name},
        label=Label(LABEL_W - 8, y + TEXT_DY, f"{wait.name} ({len(wait.tags)})", "label"),
    )
    done = wait.completed_at
    end = (
        done
        if done is not None
        else (frame.now if not frame.build.is_final else frame.build.updated_at)
    )
    x0, x1 = frame.scale.x(wait.since), frame.scale.x(max(end, wait.since))
    since = timestamp(wait.since, Stamp.CLOCK_MS)
    title = f"{wait.name} for {', '.join(wait.tags)} expected from {since}"
    if done:
        title += f"; all in at {timestamp(done, Stamp.CLOCK_MS)}"
    else:
        title += f"; still missing {', '.join(wait.outstanding)}"
    box = Box(x0, y + 7, max(x1 - x0, MIN_BAR), BAR_H - 4)
    lane.bars.append(Bar(box, "wait", title, {"outstanding": len(wait.outstanding)}))
    for tag, event in wait.received.items():
        arrived = f"{event.name} {event.status} for {tag} at {timestamp(event.at, Stamp.CLOCK_MS)}"
        css = f"arrival {event.status}"
        mark = Mark(frame.scale.x(event.at), y + 3, y + ROW_H - 3, css, arrived, {"tag": tag})
        lane.marks.append(mark)
    if timeout is not None and wait.since + timeout <= frame.t1:
        deadline = wait.since + timeout
        title = (
            f"deadline {timestamp(deadline, Stamp.CLOCK_MS)} "
            f"(waiting_since + vif_plugging_timeout {timeout}s)"
        )
        lane.marks.append(Mark(frame.scale.x(deadline), y + 1, y + ROW_H - 1, "deadline", title))
    return lane


def _legend(y: float, now: float) -> Lane:
    legend = Lane("legend")
    x = 12.0
    for text, colour in LEGEND:
        legend.bars.append(Bar(Box(x, y - 10, 12, 12), f"swatch {colour}"))
        legend.notes.append(Label(x + 16, y, text, "legend"))
        x += 24 + 7 * len(text)
    rendered = f"times UTC; rendered {timestamp(now)}"
    legend.notes.append(Label(WIDTH - 12, y, rendered, "legend rendered"))
    return legend


__all__ = ["Bar", "Box", "Diamond", "Label", "Lane", "Layout", "Mark", "layout"]
