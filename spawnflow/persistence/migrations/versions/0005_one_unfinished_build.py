"""One unfinished build per instance: a partial unique index on builds(instance_uuid).

Before it, two concurrent starts of one instance (``spawn --no-wait`` from two
shells, two agents) could both insert an unfinished build. The index makes the
database refuse the second insert; ``queue_build`` then returns the first.

A database that already holds two unfinished builds of one instance is refused:
the upgrade names them and changes nothing (the database stays at 0004). Which
of them is the real one is the operator's call (let the previous spawnflow's
agent finish or roll them back, then upgrade again); marking some of them
finished here would hide a VM or its leftovers on the host.

Revision ID: 0005
Revises: 0004
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from spawnflow.exceptions import SchemaError

revision = "0005"
down_revision = "0004"

# The final build states of spawnflow.persistence.lifecycle.FINAL, spelled out
# because a migration must not change when the code does; tests/unit/
# test_one_build_per_instance.py asserts this equals tables.unfinished_clause().
WHERE = "state NOT IN ('ACTIVE', 'FAILED', 'ROLLED_BACK')"
INDEX = "ux_builds_unfinished_instance"


def _duplicates(conn: sa.Connection) -> list[sa.Row[Any]]:
    return list(
        conn.execute(
            sa.text(
                f"SELECT instance_uuid, build_id, host, state FROM builds WHERE {WHERE} "
                f"AND instance_uuid IN (SELECT instance_uuid FROM builds WHERE {WHERE} "
                "GROUP BY instance_uuid HAVING COUNT(*) > 1) "
                "ORDER BY instance_uuid, created_at, build_id"
            )
        )
    )


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        # No insert between the check and the index (CREATE INDEX takes this lock too).
        op.execute("LOCK TABLE builds IN SHARE MODE")
    rows = _duplicates(conn)
    if rows:
        shown = "; ".join(
            f"instance {r.instance_uuid}: build {r.build_id} {r.state} on host {r.host}"
            for r in rows[:10]
        )
        more = f" (and {len(rows) - 10} more)" if len(rows) > 10 else ""
        raise SchemaError(
            "cannot upgrade to revision 0005 (one unfinished build per instance): "
            f"these instances have more than one unfinished build: {shown}{more}; "
            "let the previous spawnflow's agent finish or roll them back, then upgrade "
            "again (the database was left unchanged)"
        )
    op.create_index(
        INDEX,
        "builds",
        ["instance_uuid"],
        unique=True,
        sqlite_where=sa.text(WHERE),
        postgresql_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="builds")
