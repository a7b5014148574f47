"""The flow version a build started with.

Adds ``builds.flow_version``: a digest of the spawn flow's step names, order
and step versions (``spawnflow.flows.spawn.flow_version``), recorded when the
build is queued, so recovery never resumes a build with a flow other than
the one it started with. Nullable: a build queued before this revision has
none, and recovery treats its flow as unknown (see
``spawnflow.persistence.recovery_rules``).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.add_column(sa.Column("flow_version", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("flow_version")
