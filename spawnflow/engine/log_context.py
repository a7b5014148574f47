"""The build and step a thread works on, for every log record it writes.

The agent runs each build in a thread of its own: ``bind`` marks the thread
with its build (``Agent._run``) and step (the runners' notifications), and
``ContextFilter`` copies them onto each record as ``build_id`` and ``step``
(``-`` outside a build), so a log format can name them
(``spawnflow.cmd.logs``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

_local = threading.local()
NONE = "-"


def current() -> tuple[str, str]:
    """(build id, step) of this thread; ``-`` for what it is not in."""
    return getattr(_local, "build_id", NONE), getattr(_local, "step", NONE)


def set_step(step: str | None) -> None:
    _local.step = step or NONE


@contextlib.contextmanager
def bind(build_id: str) -> Iterator[None]:
    """This thread works on ``build_id`` until the block ends (the outer build again after)."""
    outer = current()
    _local.build_id, _local.step = build_id, NONE
    try:
        yield
    finally:
        _local.build_id, _local.step = outer


class ContextFilter(logging.Filter):
    """Adds ``build_id`` and ``step`` to every record (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.build_id, record.step = current()
        return True
