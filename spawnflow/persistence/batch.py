"""The writes of one build waiting for their commit, and the raw SQL that commits them.

A step's state change is the hot path of the log: a few rows, then a commit
that must reach the disk before the step may touch the host. The statements
are compiled once per dialect from the table definitions and run straight on
the DBAPI cursor, in batches, because SQLAlchemy's per-statement machinery
would cost more than the commit itself.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from spawnflow.persistence import tables as t

# The projections a batch may insert or update, by table name.
PROJECTIONS = {table.name: table for table in (t.logbooks, t.flowdetails, t.atomdetails)}
# Columns a projection row keeps from its insert on.
_FIXED = frozenset({"uuid", "book_uuid", "flow_uuid", "atom_type"})


class _Statement:
    """One compiled statement and how to bind a row (a dict by column name) to it."""

    def __init__(self, statement: sa.sql.expression.UpdateBase, dialect: sa.Dialect,
                 columns: list[str]):
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        self.sql = str(compiled)
        self._json = [c.name for c in statement.table.columns
                      if c.name in columns and isinstance(c.type, t.JsonText)]

    def params(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self._json:
            return row
        bound = dict(row)
        for name in self._json:
            bound[name] = t.dump_json(bound[name])
        return bound


class Statements:
    """The batch statements of one dialect (named parameters on every driver)."""

    def __init__(self, dialect: sa.Dialect):
        if dialect.name == "sqlite":
            # The sqlite3 driver takes :name parameters as well as its default ?.
            dialect = sqlite.dialect(paramstyle="named")
        event_columns = [c.name for c in t.events.columns if c.name != "seq"]
        self.insert_event = _Statement(sa.insert(t.events), dialect, event_columns)
        self.insert: dict[str, _Statement] = {}
        self.update: dict[str, _Statement] = {}
        self.select_doc: dict[str, str] = {}
        for name, table in PROJECTIONS.items():
            columns = [c.name for c in table.columns]
            self.select_doc[name] = str(sa.select(table.c.doc).where(
                table.c.uuid == sa.bindparam("uuid")).compile(dialect=dialect))
            self.insert[name] = _Statement(sa.insert(table), dialect, columns)
            # An update sets what a save can change, never the keys a row is
            # indexed by (rewriting those would rewrite index pages for nothing).
            self.update[name] = _Statement(
                sa.update(table).where(table.c.uuid == sa.bindparam("b_uuid")), dialect,
                [c for c in columns if c not in _FIXED] + ["b_uuid"])


class Batch:
    """Deferred writes of one build: events in order; projection rows, last write wins.

    A row first seen as an insert stays an insert (with the newest values), so
    a batch never updates a row it has not written yet.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        # (table name, uuid) -> (is insert, full row)
        self.rows: dict[tuple[str, str], tuple[bool, dict[str, Any]]] = {}

    def add(self, events: list[dict[str, Any]],
            rows: list[tuple[str, bool, dict[str, Any]]]) -> None:
        self.events.extend(events)
        for table, insert, row in rows:
            key = (table, row["uuid"])
            earlier = self.rows.get(key)
            self.rows[key] = (insert or (earlier is not None and earlier[0]), row)

    def extend(self, later: Batch) -> None:
        """Append the writes of ``later`` (queued after this batch was taken)."""
        self.events.extend(later.events)
        for (table, _uuid), (insert, row) in later.rows.items():
            self.add([], [(table, insert, row)])

    def write(self, cursor: Any, sql: Statements) -> None:
        """Run the batch on a DBAPI cursor inside the caller's transaction."""
        if self.events:
            cursor.executemany(sql.insert_event.sql,
                               [sql.insert_event.params(e) for e in self.events])
        for (table, uuid), (insert, row) in self.rows.items():
            if insert:
                statement = sql.insert[table]
                cursor.execute(statement.sql, statement.params(row))
            else:
                statement = sql.update[table]
                cursor.execute(statement.sql, statement.params({**row, "b_uuid": uuid}))
