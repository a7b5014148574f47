"""The stale-agent test's launcher: ``spawnflow agent`` in its own pid namespace, paused at will.

    unshare --pid --fork --mount-proc --kill-child \\
        python -m tests.integration.stale_launcher --stop-at domain_create:<uuid> -- \\
        --config-file X agent

Run as pid 1 of a new pid namespace, it forks: the child is the agent, the
parent stays pid 1 (reaping orphans, passing SIGTERM/SIGINT on) and exits
with the agent's status. The fault point is here, in the harness, never in
product code: ``--stop-at STEP:INSTANCE`` (repeated) makes the agent SIGSTOP
itself (every thread of it, its lease heartbeat too) once each STEP of each
INSTANCE's build has started executing, i.e. its RUNNING is committed and
the step has not touched the host yet. The test SIGCONTs it later from
outside. Every libvirt call the agent makes from the stop on is printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading

from spawnflow.cmd.main import main
from spawnflow.flows.spawn import TASKS
from spawnflow.virt.host import Host

BY_STEP = {cls.step: cls for cls in TASKS}


class Rendezvous:
    """The stop points: the last build to reach its point stops the whole agent.

    The others wait for it here, so that every chosen step of every chosen
    build is at its start when the process stops, and continues from there.
    """

    def __init__(self, points: list[str]):
        self.waiting = len(points)
        self.lock = threading.Lock()
        self.continued = threading.Event()
        for point in points:
            self.install(*point.split(":", 1))

    def install(self, step: str, instance: str) -> None:
        cls = BY_STEP[step]
        original = cls.execute
        rendezvous = self

        @functools.wraps(original)
        def execute(self, *args, **kwargs):
            if self.ctx.instance_uuid == instance:
                rendezvous.arrive(step, instance)
            return original(self, *args, **kwargs)

        cls.execute = execute

    def arrive(self, step: str, instance: str) -> None:
        print(f"stale-launcher: {step} of {instance} reached", flush=True)
        with self.lock:
            self.waiting -= 1
            last = self.waiting == 0
        if not last:
            self.continued.wait()
            return
        trace_host_calls()  # before the stop: no call after the wake-up goes unseen
        print("stale-launcher: stopping", flush=True)
        # To this thread, not the process: a process-directed SIGSTOP may be
        # taken by another thread, and this one runs on (past the lease check,
        # into the step's side effect) until the group stop reaches it. A
        # thread-directed one is acted on before this call returns.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        print("stale-launcher: continued", flush=True)
        self.continued.set()


def trace_host_calls() -> None:
    """From now on, print every libvirt call the agent makes (what the test reads back)."""
    original = Host.call

    @functools.wraps(original)
    def call(self, what, fn):
        print(f"stale-launcher: host call: {what}", flush=True)
        return original(self, what, fn)

    Host.call = call


def init(child: int) -> int:
    """pid 1's work: pass termination signals to the agent, reap, return its exit code."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: os.kill(child, sig))
    while True:
        pid, status = os.wait()
        if pid == child:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stop-at", action="append", default=[])
    args, rest = parser.parse_known_args()
    if os.getpid() == 1:
        # pid 1 of a namespace gets no signal it has no handler for, not even
        # its own SIGSTOP: the agent must be another process.
        child = os.fork()
        if child:
            code = init(child)
            sys.exit(code if code >= 0 else 128 - code)
    if args.stop_at:
        Rendezvous(args.stop_at)
    sys.exit(main([a for a in rest if a != "--"]))
