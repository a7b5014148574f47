"""Public history API; see ``spawnflow.persistence.history``."""

from spawnflow.persistence.history import BuildHistory, Event, History, StepHistory, Transition

__all__ = ["BuildHistory", "Event", "History", "StepHistory", "Transition"]
