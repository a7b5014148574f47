"""SQLAlchemy tables of the event log and its projections.

``events`` is the append-only truth. The other tables are projections, updated
in the same transaction as the event that changes them and rebuildable from the
events alone (see ``replay``). Schema changes go through alembic migrations in
``migrations/versions``; this module must always match the newest revision.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from oslo_serialization import jsonutils

from spawnflow.persistence import lifecycle

# What jsonutils.dumps(value, sort_keys=True) builds on every call, built once.
_ENCODER = json.JSONEncoder(sort_keys=True, default=jsonutils.to_primitive)


def dump_json(value: Any) -> str | None:
    """The stored text of a JSON column (None stays NULL)."""
    return None if value is None else _ENCODER.encode(value)


def load_json(text: str | None) -> Any:
    """The value of a JSON column's stored text."""
    return None if text is None else jsonutils.loads(text)


class JsonText(sa.types.TypeDecorator[Any]):
    """JSON stored as text: the same bytes on SQLite and PostgreSQL."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return dump_json(value)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> Any:
        return load_json(value)


def unfinished_clause() -> str:
    """The SQL condition "this build's state is not final", from the lifecycle table.

    It is the WHERE clause of the partial unique index that allows one
    unfinished build per instance (migration 0005 spells the same text; a test
    keeps the two equal).
    """
    finals = ", ".join(f"'{state}'" for state in sorted(lifecycle.FINAL))
    return f"state NOT IN ({finals})"


# SQLite only turns INTEGER PRIMARY KEY into the autoincrementing rowid.
Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("build_id", sa.String(36), nullable=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(36), nullable=True),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("from_state", sa.String(32), nullable=True),
    sa.Column("to_state", sa.String(32), nullable=True),
    sa.Column("payload", JsonText, nullable=True),
    sa.Index("ix_events_build_seq", "build_id", "seq"),
    sa.Index(
        "ix_events_atom_failures",
        "build_id",
        "name",
        sqlite_where=sa.text("kind = 'atom' AND to_state = 'FAILURE'"),
        postgresql_where=sa.text("kind = 'atom' AND to_state = 'FAILURE'"),
    ),
)

builds = sa.Table(
    "builds",
    metadata,
    sa.Column("build_id", sa.String(36), primary_key=True),
    sa.Column("instance_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("instance_name", sa.String(255), nullable=False),
    sa.Column("host", sa.String(255), nullable=False, index=True),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("spec", JsonText, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    # The spawn flow's version the build started with (migration 0008; null
    # for a build queued before flow versions). See flows.spawn.flow_version.
    sa.Column("flow_version", sa.String(64), nullable=True),
    # spawn or delete (lifecycle.KINDS; migration 0009). A delete build tears
    # its instance down with a flow of its own (spawnflow.flows.teardown).
    sa.Column("kind", sa.String(16), nullable=False, server_default=lifecycle.SPAWN),
    sa.Index("ix_builds_created_at", "created_at"),
    sa.Index("ix_builds_state_updated_at", "state", "updated_at"),
    # One unfinished build per instance and kind, whoever inserts it: two
    # concurrent starts of one instance (several processes, several hosts)
    # give one build, two deletes one delete. A delete may be queued while
    # a spawn is unfinished: it cancels that spawn first.
    sa.Index(
        "ux_builds_unfinished_instance",
        "instance_uuid",
        "kind",
        unique=True,
        sqlite_where=sa.text(unfinished_clause()),
        postgresql_where=sa.text(unfinished_clause()),
    ),
)

logbooks = sa.Table(
    "logbooks",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("doc", JsonText, nullable=False),
)

flowdetails = sa.Table(
    "flowdetails",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("book_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("doc", JsonText, nullable=False),
)

atomdetails = sa.Table(
    "atomdetails",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("flow_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("book_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("atom_type", sa.String(32), nullable=False),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("intention", sa.String(32), nullable=True),
    sa.Column("doc", JsonText, nullable=False),
)

# Not a projection: the lease that makes one agent per host the owner of its builds.
agents = sa.Table(
    "agents",
    metadata,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    # Who the owner is beyond its pid, and the takeover count (migration 0006;
    # null in a row an older spawnflow wrote). See spawnflow.engine.ownership.
    sa.Column("node", sa.String(255), nullable=True),
    sa.Column("boot_id", sa.String(64), nullable=True),
    sa.Column("pid_ns", sa.String(64), nullable=True),
    sa.Column("start_time", sa.BigInteger, nullable=True),
    sa.Column("epoch", sa.BigInteger, nullable=True),
)

PROJECTIONS = (builds, logbooks, flowdetails, atomdetails)
