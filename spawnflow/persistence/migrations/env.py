"""Alembic environment: runs on the connection handed in by spawnflow.persistence.db."""

from alembic import context

from spawnflow.persistence import tables

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=tables.metadata,
    version_table=context.config.attributes["version_table"],
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
