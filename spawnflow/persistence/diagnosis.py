"""``diagnose(build)``: what a build is waiting for, or why it failed, in words.

    waiting for network-vif-plugged for port 3f0c... since 12:00:03, deadline 12:05:03
    failed at step image: ImageChecksumMismatch: ...; rolled back: 2 steps reverted
    interrupted at step resume (last event 12:00:04); the agent of host cmp-1 will
    resume it on start ([recovery] policy resume)

Only the log is read; the few facts the log cannot know (the event deadline is
``waiting_since`` + ``[network] vif_plugging_timeout``; what recovery will do
depends on ``[recovery]``) come in as arguments. Times are UTC.
"""

from __future__ import annotations

import datetime
import time

from spawnflow.persistence import lifecycle
from spawnflow.persistence.history import (
    FORWARD,
    BuildHistory,
    Diagnosis,
    EventWait,
    Interruption,
    StepHistory,
)

STALE_AFTER = 60.0  # seconds without an event worth mentioning
DEFAULT_LEASE = 30.0  # [recovery] lease_seconds default


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"{ts:.6g}"  # a stored time no date can show (an older or damaged row)


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.3f}s"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ran(step: StepHistory) -> bool:
    return any(span.phase == FORWARD for span in step.spans)


def _failure(build: BuildHistory) -> str | None:
    name = build.failed_step
    if name is None:
        return None
    return f"failed at step {name}: {build.step(name).error}"


def _where(gap: Interruption | None) -> str:
    if gap is not None and gap.steps:
        return f"interrupted at step {', '.join(gap.steps)}"
    if gap is not None and gap.after:
        return f"interrupted after step {gap.after}"
    return "interrupted before its first step"


def _wait_text(wait: EventWait, timeout: float | None, now: float, host: str) -> str:
    tags = wait.outstanding
    text = (
        f"waiting for {wait.name} for port{'s' if len(tags) > 1 else ''} "
        f"{', '.join(tags)} since {clock(wait.since)}"
    )
    deadline = wait.deadline(timeout)
    if deadline is not None:
        text += f", deadline {clock(deadline)}"
        if now > deadline:
            text += (
                f" (passed {age(now - deadline)} ago: the agent should have stopped "
                f"waiting; is the agent of host {host} running?)"
            )
    got = [f"{e.tag} {e.status} at {clock(e.at)}" for e in wait.received.values()]
    if got:
        text += f"; received {', '.join(got)}"
    return text


def _next_step_text(
    build: BuildHistory, policy: str | None, window: float | None, timeout: float | None, now: float
) -> str:
    who = f"the agent of host {build.host}"
    last = build.interruptions[-1] if build.interruptions else None
    if last is not None and last.during == lifecycle.REVERTING:
        return f"{who} will finish rolling it back on start"
    expired = [
        w for w in build.waits if w.outstanding and timeout is not None and now > w.since + timeout
    ]
    if policy == "resume":
        action = "resume it on start ([recovery] policy resume)"
    elif policy == "rollback":
        action = "roll it back on start ([recovery] policy rollback)"
    elif policy == "auto" and window is not None:
        old = now - build.created_at
        if old < window:
            action = (
                f"resume it on start ([recovery] policy auto: {age(old)} old, "
                f"resume_window {age(window)})"
            )
        else:
            action = (
                f"roll it back on start ([recovery] policy auto: {age(old)} old, "
                f"older than resume_window {age(window)})"
            )
    else:
        action = "resume or roll it back on start, as its [recovery] policy says"
    text = f"{who} will {action}"
    if expired and policy != "rollback":
        text += (
            f"; its {expired[0].name} deadline passed at "
            f"{clock(expired[0].since + timeout)}, so a resume rolls it back"
        )
    return text


def _agent_text(build: BuildHistory, lease: float | None, now: float) -> str:
    """'' while the owner of the build's host is alive (or nothing is known)."""
    agent = build.agent
    if agent is None:
        return ""
    quiet = now - agent.heartbeat_at
    if quiet <= (lease or DEFAULT_LEASE):
        return ""
    return (
        f"; no live agent on host {build.host} (last heartbeat {age(quiet)} ago): it "
        "stays like this until the agent starts again, which then resumes or rolls it "
        "back"
    )


def diagnose(
    build: BuildHistory,
    *,
    vif_plugging_timeout: float | None = None,
    recovery_policy: str | None = None,
    resume_window: float | None = None,
    lease_seconds: float | None = None,
    now: float | None = None,
) -> Diagnosis:
    now = time.time() if now is None else now
    dead = _agent_text(build, lease_seconds, now)
    state = build.state
    current = build.current_steps
    step = current[-1].name if current else None
    quiet = (now - build.last_event_at) if build.last_event_at is not None else 0.0
    stale = f" (last event {age(quiet)} ago)" if quiet > STALE_AFTER else ""

    if state == lifecycle.ACTIVE:
        ran = [s for s in build.steps if _ran(s)]
        text = f"ACTIVE: all {_plural(len(ran), 'step')} succeeded"
        if build.duration is not None:
            text += f" in {age(build.duration)}"
        if build.interruptions:
            text += (
                f"; resumed after {_plural(len(build.interruptions), 'interruption')}"
                f" (first at step {', '.join(build.interruptions[0].steps) or '-'})"
            )
        for wait in build.waits:
            if wait.outstanding:
                text += (
                    f"; {wait.name} never came for port(s) "
                    f"{', '.join(wait.outstanding)} (not fatal)"
                )
            if wait.failed:
                text += f"; {wait.name} reported failed for {', '.join(wait.failed)} (not fatal)"
        return Diagnosis("active", text)

    if state == lifecycle.ROLLED_BACK:
        reverted = f"rolled back: {_plural(len(build.reverted_steps), 'step')} reverted"
        failure = _failure(build)
        if failure:
            return Diagnosis("rolled_back", f"{failure}; {reverted}", build.failed_step)
        recovered = [i for i in build.interruptions if i.resumed_as == lifecycle.REVERTING]
        if recovered:
            gap = recovered[-1]
            why = f" ({gap.reason})" if gap.reason else ""
            return Diagnosis(
                "rolled_back", f"{_where(gap)} at {clock(gap.last_seen)}; recovery{why} {reverted}"
            )
        if build.error:
            return Diagnosis("rolled_back", f"failed: {build.error}; {reverted}")
        started = any(_ran(s) for s in build.steps)
        return Diagnosis("cancelled", f"cancelled{'' if started else ' before it ran'}; {reverted}")

    if state == lifecycle.FAILED:
        parts = [_failure(build) or f"failed: {build.error or 'no error recorded'}"]
        broken = build.revert_failed_steps
        if broken:
            first = build.step(broken[0])
            left = [s.name for s in build.steps if _ran(s) and not s.reverted]
            parts.append(f"rollback failed at step {first.name}: {first.revert_error}")
            parts.append(
                f"{_plural(len(build.reverted_steps), 'step')} reverted, "
                f"left in place: {', '.join(left) or '-'}; operator action needed"
            )
        return Diagnosis("failed", "; ".join(parts), build.failed_step or step)

    if state == lifecycle.INTERRUPTED:
        last = build.interruptions[-1] if build.interruptions else None
        seen = last.last_seen if last else build.last_event_at
        text = f"{_where(last)} (last event {clock(seen)})"
        nxt = _next_step_text(build, recovery_policy, resume_window, vif_plugging_timeout, now)
        return Diagnosis(
            "interrupted", f"{text}; {nxt}", ", ".join(last.steps) if last and last.steps else None
        )

    if state == lifecycle.REVERTING:
        failure = _failure(build) or "cancelled"
        ran = [s for s in build.steps if _ran(s)]
        text = (
            f"rolling back after {failure}; {len(build.reverted_steps)} of "
            f"{_plural(len(ran), 'step')} reverted"
        )
        if current:
            text += f", reverting {step} since {clock(current[-1].open_span.start)}"
        return Diagnosis("reverting", text + stale + dead, build.failed_step or step)

    if state == lifecycle.QUEUED:
        return Diagnosis(
            "queued",
            f"queued since {clock(build.created_at)}, no step started"
            f"{stale}" + (dead or f"; is the agent of host {build.host} running?"),
        )

    # RUNNING
    waits = [w for w in build.waits if w.outstanding]
    if waits:
        text = _wait_text(waits[-1], vif_plugging_timeout, now, build.host)
        if current:
            text += f"; step {step} running since {clock(current[-1].open_span.start)}"
        return Diagnosis("waiting", text + dead, step)
    if current:
        span = current[-1].open_span
        text = (
            f"running step {step} since {clock(span.start)} ({age(now - span.start)}"
            f"{'' if span.attempt == 1 else f', attempt {span.attempt}'})"
        )
        failed = [tag for w in build.waits for tag in w.failed]
        if failed:
            text += f"; port(s) {', '.join(failed)} reported failed"
        return Diagnosis("running", text + stale + dead, step)
    return Diagnosis(
        "running", f"running, between steps (last event {clock(build.last_event_at)}){stale}{dead}"
    )
