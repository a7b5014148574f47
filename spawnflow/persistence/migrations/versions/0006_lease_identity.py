"""Host lease identity and epoch: who owns a host beyond a pid, and how many takeovers.

Adds to ``agents`` the owner's node name, boot id, pid namespace and process
start time (so "the owner's pid is gone" is trusted only on the same machine,
boot and pid namespace), and ``epoch``, incremented on every takeover. All
nullable: a row an older spawnflow wrote keeps them null, and such a lease is
taken over only once it expires.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

COLUMNS = (
    ("node", sa.String(255)),
    ("boot_id", sa.String(64)),
    ("pid_ns", sa.String(64)),
    ("start_time", sa.BigInteger()),
    ("epoch", sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
