"""Alembic's environment: migrate the connection vmis.host.schema hands over."""

from __future__ import annotations

from alembic import context

from vmis.host.schema import target_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    # SQLite changes a table by copying it (ALTER TABLE cannot do most changes)
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
