"""What this process last wrote of each flow and atom, so that a save costs no read.

Every entry equals the committed projection row plus this process's deferred
writes; a save diffs against it and replaces it. Anything not here (another
process wrote it, or the entry was dropped) is read from the log.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from taskflow.persistence import models


@dataclass
class CachedAtom:
    """An atom detail as last written: its projection row's parts."""

    atom_type: str
    flow_uuid: str
    book_uuid: str
    state: str | None
    doc: dict[str, Any]

    def detail(self) -> models.AtomDetail:
        # A copy: TaskFlow's merge mutates nested dicts (meta) in place, and the
        # cached doc must stay what was written, or the next diff misses changes.
        return models.atom_detail_class(self.atom_type).from_dict(copy.deepcopy(self.doc))


@dataclass
class CachedFlow:
    """A flow detail as last written, and the uuids of the atoms saved under it."""

    book_uuid: str
    state: str | None
    doc: dict[str, Any]
    atoms: set[str] = field(default_factory=set)


class ProjectionCache:
    """Flow and atom entries, with one lock for reads and replacements."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.atoms: dict[str, CachedAtom] = {}
        self.flows: dict[str, CachedFlow] = {}

    def forget(self, book_uuid: str | None = None) -> None:
        """Drop the entries of one book (or all): the next save reads the log."""
        with self.lock:
            if book_uuid is None:
                self.atoms.clear()
                self.flows.clear()
                return
            for uuid in [u for u, c in self.atoms.items() if c.book_uuid == book_uuid]:
                del self.atoms[uuid]
            for uuid in [u for u, c in self.flows.items() if c.book_uuid == book_uuid]:
                del self.flows[uuid]
