"""``diagnose(build)``: what a build is waiting for, or why it failed, in words.

    waiting for network-vif-plugged for port 3f0c... since 12:00:03, deadline 12:05:03
    failed at step image: ImageChecksumMismatch: ...; rolled back: 2 steps reverted
    interrupted at step resume (last event 12:00:04); the agent of host cmp-1 will
    resume it on start ([recovery] policy resume)

Only the log is read; the few facts the log cannot know (the event deadline is
``waiting_since`` + ``[network] vif_plugging_timeout``; what recovery will do
depends on ``[recovery]``) come in as arguments. What recovery will do is
``persistence.recovery_rules.decide``, the function the agent runs. Times are UTC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from taskflow import states as tf_states

from spawnflow.history.delete_diagnosis import diagnose_delete
from spawnflow.history.leftovers import leftovers
from spawnflow.history.model import BuildRecord, Diagnosis, EventWait, Interruption
from spawnflow.history.operator_notes import operator_text
from spawnflow.history.times import age, clock
from spawnflow.persistence import lifecycle
from spawnflow.persistence import recovery_rules as rules
from spawnflow.persistence.log_wait import LogWait
from spawnflow.persistence.step_results import VIF_PLUGGED

STALE_AFTER = 60.0  # seconds without an event worth mentioning
DEFAULT_LEASE = 30.0  # [recovery] lease_seconds default


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _failure(build: BuildRecord) -> str | None:
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


@dataclass(frozen=True)
class _Options:
    """What the log cannot know: the options the caller read from the configuration."""

    vif_plugging_timeout: float | None
    vif_plugging_is_fatal: bool
    recovery_policy: str | None
    resume_window: float | None
    lease_seconds: float | None
    now: float
    flow_version: str | None = None  # the running code's (None: not known)
    on_flow_change: str = rules.ROLLBACK


def _facts(build: BuildRecord) -> rules.Facts:
    """The facts ``recovery_rules.decide`` reads, from the fold (as the agent reads TaskFlow's)."""
    last = build.interruptions[-1] if build.interruptions else None
    reverting = {tf_states.REVERTING, tf_states.REVERTED}
    return rules.Facts(
        created_at=build.created_at,
        cancelled=any(e.name == rules.CANCEL_REQUESTED for e in build.external_events),
        flow_version=build.flow_version,
        was_reverting=(last is not None and last.during == lifecycle.REVERTING)
        or any(s.state in reverting for s in build.steps),
        waiting=rules.open_wait(
            {s.name: s.state for s in build.steps}, {s.name: s.result for s in build.steps}
        ),
    )


def _policy(opts: _Options) -> rules.Policy | None:
    """The recovery options, when the caller gave all the rules need (else None)."""
    policy = opts.recovery_policy
    if policy not in (rules.RESUME, rules.ROLLBACK, rules.AUTO):
        return None
    if policy == rules.AUTO and opts.resume_window is None:
        return None
    return rules.Policy(
        policy=policy,
        resume_window=opts.resume_window if opts.resume_window is not None else 0.0,
        # Without a timeout no deadline is known: the rule on it cannot fire.
        vif_plugging_timeout=opts.vif_plugging_timeout
        if opts.vif_plugging_timeout is not None
        else float("inf"),
        vif_plugging_is_fatal=opts.vif_plugging_is_fatal,
    )


def _action_text(decision: rules.Decision, policy: rules.Policy, old: float) -> str:
    """``decision`` as the words after "the agent of host X will"."""
    verb = "resume it" if decision.action == rules.RESUME else "roll it back"
    if decision.rule == rules.DEADLINE and decision.deadline is not None:
        return (
            f"roll it back on start: its {VIF_PLUGGED} deadline passed at "
            f"{clock(decision.deadline)} (vif_plugging_is_fatal)"
        )
    if decision.rule == rules.WINDOW:
        older = "older than " if decision.action == rules.ROLLBACK else ""
        return (
            f"{verb} on start ([recovery] policy auto: {age(old)} old, "
            f"{older}resume_window {age(policy.resume_window)})"
        )
    return f"{verb} on start ([recovery] policy {policy.policy})"


def _next_step_text(build: BuildRecord, opts: _Options) -> str:
    """What the next start of the host's agent does with this interrupted build."""
    who = f"the agent of host {build.host}"
    facts = _facts(build)
    if facts.cancelled:
        return f"{who} will roll it back on start (an operator cancelled it)"
    if facts.was_reverting:
        return f"{who} will finish rolling it back on start"
    changed = rules.flow_change(
        facts,
        rules.Policy(
            rules.RESUME,
            0.0,
            float("inf"),
            False,
            flow_version=opts.flow_version,
            on_flow_change=opts.on_flow_change,
        ),
    )
    if changed is not None and changed.action == rules.HOLD:
        return (
            f"it is held for the operator, because {changed.reason}: "
            f"spawnflow build rollback {build.build_id} rolls it back"
        )
    if changed is not None:
        return f"{who} will roll it back on start, because {changed.reason}"
    policy = _policy(opts)
    if policy is not None:
        decision = rules.decide(facts, policy, opts.now)
        return f"{who} will {_action_text(decision, policy, opts.now - build.created_at)}"
    text = f"{who} will resume or roll it back on start, as its [recovery] policy says"
    if opts.vif_plugging_timeout is not None and opts.recovery_policy != rules.ROLLBACK:
        unknown = rules.Policy(
            rules.RESUME, 0.0, opts.vif_plugging_timeout, opts.vif_plugging_is_fatal
        )
        deadline = rules.deadline_passed(facts, unknown, opts.now)
        if deadline is not None:
            text += f"; its {VIF_PLUGGED} deadline passed at {clock(deadline)}, so it rolls back"
    return text


def _agent_text(build: BuildRecord, lease: float | None, now: float) -> str:
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


def _active(build: BuildRecord) -> Diagnosis:
    ran = [s for s in build.steps if s.ran]
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
                f"; {wait.name} never came for port(s) {', '.join(wait.outstanding)} (not fatal)"
            )
        if wait.failed:
            text += f"; {wait.name} reported failed for {', '.join(wait.failed)} (not fatal)"
    if build.audit is not None and build.audit.missing:
        text += (
            f"; the host has no {', no '.join(build.audit.missing)} for this ACTIVE "
            f"instance (host audit at {clock(build.audit.at)})"
        )
    return Diagnosis("active", text)


def _rolled_back(build: BuildRecord) -> Diagnosis:
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
    started = any(s.ran for s in build.steps)
    return Diagnosis("cancelled", f"cancelled{'' if started else ' before it ran'}; {reverted}")


def _failed(build: BuildRecord, step: str | None) -> Diagnosis:
    parts = [_failure(build) or f"failed: {build.error or 'no error recorded'}"]
    broken = build.revert_failed_steps
    if broken:
        first = build.step(broken[0])
        steps = [s.name for s in build.steps if s.ran and not s.reverted]
        parts.append(f"rollback failed at step {first.name}: {first.revert_error}")
        parts.append(
            f"{_plural(len(build.reverted_steps), 'step')} reverted, steps not reverted: "
            f"{', '.join(steps) or '-'}; left on the host: "
            f"{'; '.join(leftovers(build)) or 'nothing recorded'}; operator action needed"
        )
    return Diagnosis("failed", "; ".join(parts), build.failed_step or step)


def _interrupted(build: BuildRecord, opts: _Options) -> Diagnosis:
    last = build.interruptions[-1] if build.interruptions else None
    seen = last.last_seen if last else build.last_event_at
    text = f"{_where(last)} (last event {clock(seen)})"
    steps = ", ".join(last.steps) if last and last.steps else None
    return Diagnosis("interrupted", f"{text}; {_next_step_text(build, opts)}", steps)


def _reverting(build: BuildRecord, tail: str) -> Diagnosis:
    current = build.current_steps
    step = current[-1].name if current else None
    ran = [s for s in build.steps if s.ran]
    text = (
        f"rolling back after {_failure(build) or 'cancelled'}; {len(build.reverted_steps)} of "
        f"{_plural(len(ran), 'step')} reverted"
    )
    span = current[-1].open_span if current else None
    if span is not None:
        text += f", reverting {step} since {clock(span.start)}"
    return Diagnosis("reverting", text + tail, build.failed_step or step)


def _running(build: BuildRecord, opts: _Options, stale: str, dead: str) -> Diagnosis:
    current = build.current_steps
    step = current[-1].name if current else None
    span = current[-1].open_span if current else None
    waits = [w for w in build.waits if w.outstanding]
    if waits:
        text = _wait_text(waits[-1], opts.vif_plugging_timeout, opts.now, build.host)
        if span is not None:
            text += f"; step {step} running since {clock(span.start)}"
        return Diagnosis("waiting", text + dead, step)
    if span is not None:
        text = (
            f"running step {step} since {clock(span.start)} ({age(opts.now - span.start)}"
            f"{'' if span.attempt == 1 else f', attempt {span.attempt}'})"
        )
        failed = [tag for w in build.waits for tag in w.failed]
        if failed:
            text += f"; port(s) {', '.join(failed)} reported failed"
        return Diagnosis("running", text + stale + dead, step)
    return Diagnosis(
        "running", f"running, between steps (last event {clock(build.last_event_at)}){stale}{dead}"
    )


def _waiting_for_log(build: BuildRecord, wait: LogWait) -> Diagnosis:
    current = build.current_steps
    step = current[-1].name if current else None
    where = f" at step {step}" if step else ""
    retries = f"{wait.attempts} {'retry' if wait.attempts == 1 else 'retries'}"
    return Diagnosis(
        "waiting",
        f"waiting for the database since {clock(wait.since)}{where} "
        f"({retries} so far: {wait.error}); nothing more runs "
        "until the log takes the build's writes, then it is resumed or rolled back "
        "as after a restart",
        step,
    )


def diagnose(
    build: BuildRecord,
    *,
    vif_plugging_timeout: float | None = None,
    vif_plugging_is_fatal: bool = True,
    recovery_policy: str | None = None,
    resume_window: float | None = None,
    lease_seconds: float | None = None,
    now: float | None = None,
    log_wait: LogWait | None = None,
    flow_version: str | None = None,
    on_flow_change: str = rules.ROLLBACK,
) -> Diagnosis:
    """What ``build`` waits for, or why it failed, in words (see the module docstring),
    then what operators did to it (``build retry|resolve``: who, when, the note).

    The options are what the log cannot know, as ``[network]`` and
    ``[recovery]`` set them; one left out is not claimed (no deadline without
    ``vif_plugging_timeout``, no recovery decision without ``recovery_policy``).
    ``log_wait``: the build's agent says it is waiting for the log to take a
    write (``persistence.log_wait``, read beside the agent).
    ``flow_version``: the running code's flow version (``flows.spawn.flow_version``)
    and ``on_flow_change`` its ``[recovery]`` option: an interrupted build whose
    flow changed is rolled back or held (``recovery_rules.flow_change``).
    A RESOLVED build is told as the resolve, then what it was before (FAILED).
    """
    done_by_hand = operator_text(build)
    if build.state == lifecycle.RESOLVED:
        current = build.current_steps
        before = _failed(build, current[-1].name if current else None)
        return Diagnosis("resolved", f"{done_by_hand}; before: {before.text}", before.step)
    opts = _Options(
        vif_plugging_timeout=vif_plugging_timeout,
        vif_plugging_is_fatal=vif_plugging_is_fatal,
        recovery_policy=recovery_policy,
        resume_window=resume_window,
        lease_seconds=lease_seconds,
        now=time.time() if now is None else now,
        flow_version=flow_version,
        on_flow_change=on_flow_change,
    )
    found = _diagnose(build, opts, log_wait)
    if not done_by_hand:
        return found
    return Diagnosis(found.kind, f"{found.text}; {done_by_hand}", found.step)


def _diagnose(build: BuildRecord, opts: _Options, log_wait: LogWait | None) -> Diagnosis:
    """The diagnosis by the build's state, before what operators did is added."""
    dead = _agent_text(build, opts.lease_seconds, opts.now)
    quiet = (opts.now - build.last_event_at) if build.last_event_at is not None else 0.0
    stale = f" (last event {age(quiet)} ago)" if quiet > STALE_AFTER else ""
    current = build.current_steps
    state = build.state
    if log_wait is not None and not lifecycle.is_final(state):
        return _waiting_for_log(build, log_wait)
    if build.kind == lifecycle.DELETE or state == lifecycle.DELETED:
        return diagnose_delete(build, stale + dead)
    if state == lifecycle.ACTIVE:
        return _active(build)
    if state == lifecycle.ROLLED_BACK:
        return _rolled_back(build)
    if state == lifecycle.FAILED:
        return _failed(build, current[-1].name if current else None)
    if state == lifecycle.INTERRUPTED:
        return _interrupted(build, opts)
    if state == lifecycle.REVERTING:
        return _reverting(build, stale + dead)
    if state == lifecycle.QUEUED:
        return Diagnosis(
            "queued",
            f"queued since {clock(build.created_at)}, no step started"
            f"{stale}" + (dead or f"; is the agent of host {build.host} running?"),
        )
    return _running(build, opts, stale, dead)
