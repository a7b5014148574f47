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
from sqlalchemy.dialects import postgresql, sqlite

from spawnflow.persistence import tables as t

# The projections a batch may insert or update, by table name.
PROJECTIONS = {table.name: table for table in (t.logbooks, t.flowdetails, t.atomdetails)}
# Columns a projection row keeps from its insert on.
_FIXED = frozenset({"uuid", "book_uuid", "flow_uuid", "atom_type"})


class _Statement:
    """One compiled statement; rows bind to it by column name, JSON already encoded."""

    def __init__(
        self, statement: sa.sql.expression.UpdateBase, dialect: sa.Dialect, columns: list[str]
    ):
        self.sql = str(statement.compile(dialect=dialect, column_keys=columns))


def _upsert(table: sa.Table, dialect: sa.Dialect) -> sa.sql.expression.Insert:
    """INSERT that updates the row if it exists (another writer, or a stale cache, made
    it): a row queued as new can never fail its build's every later commit."""
    insert = (sqlite.insert if dialect.name == "sqlite" else postgresql.insert)(table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.uuid],
        set_={c.name: insert.excluded[c.name] for c in table.columns if c.name not in _FIXED},
    )


def encode(row: dict[str, Any], table: sa.Table) -> dict[str, Any]:
    """``row`` with its JSON columns encoded: done when a save is staged, so a value
    that cannot be stored fails that save, not a later commit."""
    return {
        k: t.dump_json(v) if isinstance(table.c[k].type, t.JsonText) else v for k, v in row.items()
    }


class Statements:
    """The batch statements of one dialect (named parameters on every driver)."""

    def __init__(self, dialect: sa.Dialect):
        if dialect.name == "sqlite":
            # The sqlite3 driver takes :name parameters as well as its default ?.
            dialect = sqlite.dialect(paramstyle="named")
        event_columns = [c.name for c in t.events.columns if c.name != "seq"]
        # inline(): no RETURNING of the new seq (PostgreSQL would fetch it per row).
        self.insert_event = _Statement(sa.insert(t.events).inline(), dialect, event_columns)
        # The fencing check: the lease's epoch, read under a share lock on
        # PostgreSQL so a takeover (an UPDATE of that row) waits for this
        # transaction, or this one sees the takeover (SQLite: BEGIN IMMEDIATE
        # already serialises every writer).
        self.fence = str(
            sa.select(t.agents.c.epoch)
            .where(t.agents.c.host == sa.bindparam("fence_host"))
            .with_for_update(read=True)
            .compile(dialect=dialect)
        )
        self.insert: dict[str, _Statement] = {}
        self.update: dict[str, _Statement] = {}
        self.select_doc: dict[str, str] = {}
        for name, table in PROJECTIONS.items():
            columns = [c.name for c in table.columns]
            self.select_doc[name] = str(
                sa.select(table.c.doc)
                .where(table.c.uuid == sa.bindparam("uuid"))
                .compile(dialect=dialect)
            )
            self.insert[name] = _Statement(_upsert(table, dialect), dialect, columns)
            # An update sets what a save can change, never the keys a row is
            # indexed by (rewriting those would rewrite index pages for nothing).
            self.update[name] = _Statement(
                sa.update(table).where(table.c.uuid == sa.bindparam("b_uuid")),
                dialect,
                [c for c in columns if c not in _FIXED] + ["b_uuid"],
            )


class Batch:
    """Deferred writes of one build: events in order; projection rows, last write wins.

    A row first seen as an insert stays an insert (with the newest values), so
    a batch never updates a row it has not written yet.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        # (table name, uuid) -> (is insert, full row)
        self.rows: dict[tuple[str, str], tuple[bool, dict[str, Any]]] = {}

    def add(
        self, events: list[dict[str, Any]], rows: list[tuple[str, bool, dict[str, Any]]]
    ) -> None:
        """Queue events and ``(table name, is insert, row)``; JSON columns encoded."""
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
            cursor.executemany(sql.insert_event.sql, self.events)
        for (table, uuid), (insert, row) in self.rows.items():
            if insert:
                cursor.execute(sql.insert[table].sql, row)
            else:
                cursor.execute(sql.update[table].sql, {**row, "b_uuid": uuid})
