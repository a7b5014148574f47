"""spawnflow: durable, revertible VM spawns on a libvirt compute host.

``from spawnflow import Agent`` is the library entry point; see README.md.
"""

from spawnflow.engine.agent import Agent
from spawnflow.engine.outcome import Outcome

__all__ = ["Agent", "Outcome"]
