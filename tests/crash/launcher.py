"""The crash harness's agent launcher: ``spawnflow agent`` plus one fault point.

    python -m tests.crash.launcher --fault before:image -- --config-file X agent

A point names a step of the spawn flow or of the delete flow (their step
names are distinct). Fault points (all here, none in product code):
  before:<step>   SIGKILL when the step starts executing (RUNNING is committed)
  after:<step>    SIGKILL after the step's side effect, before its result is saved
  revert:<step>   SIGKILL after the step's revert did its work, before REVERTED is saved
  fail:<step>     the step raises (to make the flow revert), no kill
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys

from spawnflow.cmd.main import main
from spawnflow.flows import spawn, teardown

BY_STEP = {cls.step: cls for cls in (*spawn.TASKS, *teardown.TASKS)}
if len(BY_STEP) != len(spawn.TASKS) + len(teardown.TASKS):
    raise SystemExit("a step name is in both the spawn and the delete flow: fault points clash")


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    when, step = point.split(":", 1)
    cls = BY_STEP[step]
    if when in ("before", "after", "fail"):
        original = cls.execute

        @functools.wraps(original)
        def execute(self, *args, **kwargs):
            if when == "before":
                die()
            if when == "fail":
                raise RuntimeError(f"injected failure in {step}")
            result = original(self, *args, **kwargs)
            die()
            return result

        cls.execute = execute
    elif when == "revert":
        original_revert = cls.revert

        @functools.wraps(original_revert)
        def revert(self, *args, **kwargs):
            original_revert(self, *args, **kwargs)
            die()

        cls.revert = revert
    else:
        raise SystemExit(f"unknown fault point {point}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", action="append", default=[])
    args, rest = parser.parse_known_args()
    for fault in args.fault:
        install(fault)
    sys.exit(main([a for a in rest if a != "--"]))
