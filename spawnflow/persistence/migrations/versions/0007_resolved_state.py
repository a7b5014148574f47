"""RESOLVED is final: the one-unfinished-build-per-instance index's clause names it.

``spawnflow build resolve`` moves a FAILED build to RESOLVED (dealt with by an
operator). The partial unique index of 0005 counts every state it does not
name as unfinished, so without this a RESOLVED build would keep its instance
from ever being built again. The index is dropped and made again with the new
clause (no row can be RESOLVED before this revision, so nothing can clash).

A downgrade is refused while a RESOLVED build exists: the old clause would
count it as unfinished, and the old code does not know the state.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from spawnflow.exceptions import SchemaError

revision = "0007"
down_revision = "0006"

# spawnflow.persistence.lifecycle.FINAL at this revision, spelled out because a
# migration must not change when the code does; tests/unit/
# test_one_build_per_instance.py asserts the newest such clause equals
# tables.unfinished_clause().
WHERE = "state NOT IN ('ACTIVE', 'FAILED', 'RESOLVED', 'ROLLED_BACK')"
PREVIOUS = "state NOT IN ('ACTIVE', 'FAILED', 'ROLLED_BACK')"  # 0005's
INDEX = "ux_builds_unfinished_instance"


def _recreate(where: str) -> None:
    op.drop_index(INDEX, table_name="builds")
    op.create_index(
        INDEX,
        "builds",
        ["instance_uuid"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    _recreate(WHERE)


def downgrade() -> None:
    conn = op.get_bind()
    resolved = conn.execute(
        sa.text("SELECT COUNT(*) FROM builds WHERE state = 'RESOLVED'")
    ).scalar()
    if resolved:
        raise SchemaError(
            f"cannot downgrade below revision 0007: {resolved} build(s) are RESOLVED, "
            "a state older code does not know (the database was left unchanged)"
        )
    _recreate(PREVIOUS)
