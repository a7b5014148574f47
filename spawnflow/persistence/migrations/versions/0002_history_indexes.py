"""Indexes for history listings and retention: builds by creation and by age.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_index("ix_builds_created_at", "builds", ["created_at"])
    op.create_index("ix_builds_state_updated_at", "builds", ["state", "updated_at"])
