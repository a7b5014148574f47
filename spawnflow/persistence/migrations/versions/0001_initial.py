"""Initial schema: events log, builds, TaskFlow logbook/flow/atom projections.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from spawnflow.persistence.tables import JsonText, Seq

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("build_id", sa.String(36), nullable=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(36), nullable=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=True),
        sa.Column("payload", JsonText, nullable=True),
    )
    op.create_index("ix_events_build_seq", "events", ["build_id", "seq"])
    op.create_table(
        "builds",
        sa.Column("build_id", sa.String(36), primary_key=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("instance_name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("spec", JsonText, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
    )
    for column in ("instance_uuid", "host", "state"):
        op.create_index(f"ix_builds_{column}", "builds", [column])
    op.create_table(
        "logbooks",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("doc", JsonText, nullable=False),
    )
    op.create_table(
        "flowdetails",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("book_uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("state", sa.String(32), nullable=True),
        sa.Column("doc", JsonText, nullable=False),
    )
    op.create_index("ix_flowdetails_book_uuid", "flowdetails", ["book_uuid"])
    op.create_table(
        "atomdetails",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("flow_uuid", sa.String(36), nullable=False),
        sa.Column("book_uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("atom_type", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=True),
        sa.Column("intention", sa.String(32), nullable=True),
        sa.Column("doc", JsonText, nullable=False),
    )
    op.create_index("ix_atomdetails_flow_uuid", "atomdetails", ["flow_uuid"])
    op.create_index("ix_atomdetails_book_uuid", "atomdetails", ["book_uuid"])
