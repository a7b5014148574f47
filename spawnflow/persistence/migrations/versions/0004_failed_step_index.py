"""Partial index for `history list --failed-step`: the atom failures of each build.

Partial, so ordinary appends (nearly all not failures) do not pay for it.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

WHERE = sa.text("kind = 'atom' AND to_state = 'FAILURE'")


def upgrade() -> None:
    op.create_index(
        "ix_events_atom_failures",
        "events",
        ["build_id", "name"],
        sqlite_where=WHERE,
        postgresql_where=WHERE,
    )
