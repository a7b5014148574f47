"""spawnflow: durable, revertible VM spawns on a libvirt compute host.

``from spawnflow import Agent`` is the library entry point; see README.md.
The agent is imported on first use, so that tools which only read the
history (``spawnflow history ...``) do not load libvirt and the flows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spawnflow.engine.agent import Agent
    from spawnflow.engine.outcome import Outcome

__all__ = ["Agent", "Outcome"]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from spawnflow.engine.agent import Agent

        return Agent
    if name == "Outcome":
        from spawnflow.engine.outcome import Outcome

        return Outcome
    raise AttributeError(f"module 'spawnflow' has no attribute {name!r}")
