"""One build as text: the summary above its step table, and the step table's rows.

What ``history show`` and ``spawn`` print. The compact table fits 80 columns
(``STEP_COLUMNS``: short durations, UTC clock times, shortened errors); the
full one (``STEP_FULL_COLUMNS``) gives every field for json, yaml, csv and value.
"""

from __future__ import annotations

from typing import Any

from spawnflow.cmd.render.text import fit, safe, shorten, table_width, wrap
from spawnflow.cmd.render.times import Duration, Stamp, duration, iso, rounded, timestamp
from spawnflow.history import BuildHistory, lifecycle

STEP_COLUMNS = ("Step", "State", "Start", "Took", "Revert", "Try", "Error")
STEP_FULL_COLUMNS = (
    "Step",
    "State",
    "Start",
    "End",
    "Duration",
    "Attempts",
    "Revert Start",
    "Revert End",
    "Revert Duration",
    "Error",
    "Revert Error",
)


def step_rows(build: BuildHistory, width: int | None = None) -> list[tuple[Any, ...]]:
    """The compact 80-column step table (STEP_COLUMNS)."""
    rows = [
        (
            step.name,
            step.state,
            timestamp(step.started_at, Stamp.CLOCK),
            duration(step.duration, Duration.COLUMN),
            duration(step.revert_duration, Duration.COLUMN),
            step.attempts or "-",
            step.revert_error or step.error or "",
        )
        for step in build.steps
    ]
    return fit(STEP_COLUMNS, rows, {"Error": 5, "Step": 8}, width)


def step_full_rows(build: BuildHistory) -> list[tuple[Any, ...]]:
    """Every field of every step (STEP_FULL_COLUMNS): ISO 8601 times, seconds."""
    return [
        (
            s.name,
            s.state,
            iso(s.started_at),
            iso(s.ended_at),
            rounded(s.duration, 6),
            s.attempts,
            iso(s.revert_started_at),
            iso(s.revert_ended_at),
            rounded(s.revert_duration, 6),
            s.error,
            s.revert_error,
        )
        for s in build.steps
    ]


def _recovery_lines(build: BuildHistory, width: int) -> list[str]:
    lines = []
    for gap in build.interruptions:
        where = ", ".join(gap.steps) or "between steps"
        text = (
            f"interrupted at {where} (last event {timestamp(gap.last_seen, Stamp.CLOCK)}, "
            f"marked {timestamp(gap.at, Stamp.CLOCK)})"
        )
        if gap.resumed_as == lifecycle.RUNNING:
            text += f", resumed {timestamp(gap.resumed_at, Stamp.CLOCK)}"
        elif gap.resumed_as == lifecycle.REVERTING:
            text += f", rolled back from {timestamp(gap.resumed_at, Stamp.CLOCK)}"
        lines += wrap("recovery", text, width)
    return lines


def summary(build: BuildHistory, width: int | None = None, brief: bool = False) -> str:
    """The lines above the step table: who, where, outcome, errors, recovery.

    ``brief`` leaves out the build's error (a diagnosis printed below repeats it).
    """
    width = width or table_width()
    states = " -> ".join(t.to_state for t in build.lifecycle)
    lines = [
        f"build     {build.build_id}" + ("  (a delete)" if build.kind != "spawn" else ""),
        f"instance  {build.instance_uuid} {shorten(build.instance_name, 30)}",
        f"host      {shorten(build.host, 30)}  created {timestamp(build.created_at)}",
        f"state     {build.state}  ({states})",
    ]
    if build.duration is not None:
        lines.append(
            f"took      {duration(build.duration)}  (finished {timestamp(build.finished_at)})"
        )
    if build.error and not brief:
        lines += wrap("error", build.error, width)
    failed = build.failed_step
    if failed and build.step(failed).error != build.error and not brief:
        lines += wrap("failed", f"{failed}: {build.step(failed).error}", width)
    for name in build.revert_failed_steps:
        lines += wrap("revert", f"{name}: {build.step(name).revert_error}", width)
    lines += _recovery_lines(build, width)
    return "\n".join(safe(line) for line in lines)


__all__ = ["STEP_COLUMNS", "STEP_FULL_COLUMNS", "step_full_rows", "step_rows", "summary"]
