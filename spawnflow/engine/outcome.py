"""What ``Agent.wait`` returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    build_id: str
    state: str  # a lifecycle state: ACTIVE, ROLLED_BACK, FAILED (or not final yet)
    error: str | None  # "<ExceptionType>: message" of the step that failed, if any
