"""Delete builds: ``builds.kind``, DELETED final, one unfinished build per instance and kind.

A delete is a build of its own (kind ``delete``) that tears its instance
down; its spawn builds end DELETED with it. ``builds.kind`` says which
(``spawn`` for every older row). The partial unique index of 0005/0007 is
made again on (instance_uuid, kind) with DELETED among the final states: a
delete may be queued while its instance's spawn is unfinished (it cancels
that spawn first), never two deletes or two spawns of one instance at once.

A downgrade is refused while a delete build or a DELETED build exists: older
code knows neither.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from spawnflow.exceptions import SchemaError

revision = "0009"
down_revision = "0008"

# spawnflow.persistence.lifecycle.FINAL at this revision, spelled out because a
# migration must not change when the code does (tests/unit/
# test_one_build_per_instance.py keeps the newest equal to the code's).
WHERE = "state NOT IN ('ACTIVE', 'DELETED', 'FAILED', 'RESOLVED', 'ROLLED_BACK')"
PREVIOUS = "state NOT IN ('ACTIVE', 'FAILED', 'RESOLVED', 'ROLLED_BACK')"  # 0007's
INDEX = "ux_builds_unfinished_instance"


def _recreate(columns: list[str], where: str) -> None:
    op.drop_index(INDEX, table_name="builds")
    op.create_index(
        INDEX,
        "builds",
        columns,
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="spawn"))
    _recreate(["instance_uuid", "kind"], WHERE)


def downgrade() -> None:
    conn = op.get_bind()
    newer = conn.execute(
        sa.text("SELECT COUNT(*) FROM builds WHERE kind != 'spawn' OR state = 'DELETED'")
    ).scalar()
    if newer:
        raise SchemaError(
            f"cannot downgrade below revision 0009: {newer} build(s) are delete builds "
            "or DELETED, which older code does not know (the database was left unchanged)"
        )
    _recreate(["instance_uuid"], PREVIOUS)
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("kind")
