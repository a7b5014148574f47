"""The values an export document may hold: bounds, JSON types, times, ids, column widths.

``Checker`` checks one value at a time and names where in the document a bad
one sits; ``import_events`` and ``import_check`` use it. The constants are
the document format (version 1) and the bounds any document must keep.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from typing import Any

from taskflow import states as tf_states
from taskflow.persistence import models

from spawnflow.exceptions import PersistenceError
from spawnflow.persistence.eventlog import ATOM, BUILD, EXTERNAL, FLOW, LOGBOOK

FORMAT = "spawnflow-build-history"
VERSION = 1
EVENT_FIELDS = ("seq", "ts", "kind", "subject", "name", "from_state", "to_state", "payload")
# What a version 1 event must carry; ``build_id`` may be there too (it must be the build's).
REQUIRED_EVENT_FIELDS = frozenset(
    ("seq", "ts", "kind", "subject", "name", "from_state", "to_state", "payload")
)
ROW_FIELDS = (
    "build_id",
    "instance_uuid",
    "instance_name",
    "host",
    "state",
    "created_at",
    "updated_at",
    "spec",
    "error",
    "last_seq",
)
TOP_FIELDS = frozenset(("format", "version", "exported_at", "schema_revision", "build", "events"))
# Replayed created_at comes from the QUEUED event's time, which the log takes a
# moment before it fills the builds row.
CLOCK_SLACK = 5.0

# Bounds of a document. A real build exports to ~100 KiB and ~100 events; one
# resumed many times stays far below these. The depth covers specs, results
# and failures with their causes (under 15 levels in practice).
MAX_BYTES = 64 * 1024 * 1024
MAX_EVENTS = 100_000
MAX_DEPTH = 64
# Times: 2000-01-01T00:00:00Z .. 9999-12-31T23:59:59Z. Nothing spawnflow wrote
# is older; nothing later can be shown as a date.
EARLIEST = 946684800.0
LATEST = 253402300799.0
_INT_LIMIT = 2**63  # every integer fits a signed 64-bit column
# Column widths (tables.py): PostgreSQL refuses longer text, SQLite would keep it.
ID_LEN, NAME_LEN, STATE_LEN = 36, 255, 32

KINDS = frozenset((BUILD, LOGBOOK, FLOW, ATOM, EXTERNAL))
FLOW_STATES = frozenset(
    (
        tf_states.PENDING,
        tf_states.RUNNING,
        tf_states.SUCCESS,
        tf_states.FAILURE,
        tf_states.REVERTED,
        tf_states.SUSPENDING,
        tf_states.SUSPENDED,
        tf_states.RESUMING,
    )
)
ATOM_STATES = frozenset(
    (
        tf_states.PENDING,
        tf_states.RUNNING,
        tf_states.SUCCESS,
        tf_states.FAILURE,
        tf_states.REVERTING,
        tf_states.REVERTED,
        tf_states.REVERT_FAILURE,
        tf_states.IGNORE,
        tf_states.RETRYING,
    )
)
ATOM_TYPES = frozenset(models.ATOM_TYPES)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


class InvalidExport(PersistenceError):
    """The file is not a (complete, readable) spawnflow build history export."""


class DuplicateBuild(PersistenceError):
    """The target database already holds this build; nothing was imported."""


def where(path: tuple[Any, ...]) -> str:
    """``events[12].payload.set`` from ('events', 12, 'payload', 'set')."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{shown(part)}]"
    return out or "document"


def shown(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr (escapes controls and bidi), shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Checker:
    """Type and range checks of a document's values; each refusal names the path."""

    def __init__(self, source: str):
        self.source = source

    def bad(self, path: tuple[Any, ...], text: str) -> InvalidExport:
        return InvalidExport(f"{self.source}: {where(path)}: {text}")

    # -- any value ------------------------------------------------------------------

    def scan(self, doc: Any) -> None:
        """JSON types only, finite numbers, UTF-8 text, nesting within MAX_DEPTH.

        Iterative: a document nested 100,000 deep is refused, not a RecursionError.
        """
        stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
        while stack:
            value, path = stack.pop()
            if isinstance(value, (dict, list)):
                stack.extend(self._children(value, path))
            else:
                self._scalar(value, path)

    def _children(
        self, value: dict[str, Any] | list[Any], path: tuple[Any, ...]
    ) -> list[tuple[Any, tuple[Any, ...]]]:
        """The items of an object or array with their paths; its keys checked."""
        if len(path) >= MAX_DEPTH:
            raise self.bad(path[:3], f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return [(item, path + (i,)) for i, item in enumerate(value)]
        children = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise self.bad(path, f"key {shown(key)} is not a string")
            self.text(key, path)
            children.append((item, path + (key,)))
        return children

    def _scalar(self, value: Any, path: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            self.text(value, path)
        elif value is None or isinstance(value, bool):
            return
        elif isinstance(value, int):
            if not -_INT_LIMIT <= value < _INT_LIMIT:
                raise self.bad(path, "integer out of the 64-bit range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise self.bad(path, f"must be a finite number, not {value!r}")
        else:
            raise self.bad(path, f"a {type(value).__name__} is not a JSON value")

    def text(self, value: str, path: tuple[Any, ...]) -> None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.bad(path, "text with a lone surrogate is not UTF-8") from None

    # -- typed fields ---------------------------------------------------------------

    def time(self, value: Any, path: tuple[Any, ...]) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not EARLIEST <= value <= LATEST
        ):
            raise self.bad(
                path,
                "must be a time in POSIX seconds between 2000-01-01 and "
                f"9999-12-31, not {shown(value)}",
            )
        return float(value)

    def column(
        self,
        value: Any,
        path: tuple[Any, ...],
        limit: int | None,
        *,
        required: bool = False,
        empty: bool = True,
    ) -> str | None:
        """A text column: str (or None unless required), at most ``limit`` characters."""
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.bad(
                path, f"must be {'text' if required else 'text or null'}, not {shown(value)}"
            )
        if not value and not empty:
            raise self.bad(path, "must not be empty")
        if limit is not None and len(value) > limit:
            raise self.bad(path, f"longer than {limit} characters")
        if "\x00" in value:
            raise self.bad(path, "contains a NUL character")
        return value

    def uuid(self, value: Any, path: tuple[Any, ...]) -> str:
        try:
            ok = isinstance(value, str) and str(uuid.UUID(value)) == value
        except ValueError:
            ok = False
        if not ok:
            raise self.bad(path, f"must be a lowercase UUID, not {shown(value)}")
        return str(value)

    def obj(self, value: Any, path: tuple[Any, ...], *, null: bool = False) -> dict[str, Any]:
        if value is None and null:
            return {}
        if not isinstance(value, dict):
            raise self.bad(path, "must be an object" + (" or null" if null else ""))
        return value

    def keys(self, value: dict[str, Any], allowed: Iterable[str], path: tuple[Any, ...]) -> None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise self.bad(path, f"unknown field {shown(unknown[0])}")

    def changes(
        self, payload: dict[str, Any], path: tuple[Any, ...]
    ) -> tuple[dict[str, Any], list[Any]]:
        """The ``set`` object and ``unset`` list of a logbook/flow/atom payload."""
        changed = self.obj(payload.get("set"), path + ("set",), null=True)
        unset = payload.get("unset", [])
        if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
            raise self.bad(path + ("unset",), "must be a list of field names")
        return changed, unset
