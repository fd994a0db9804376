"""Alembic environment: run with a connection handed over by storage_core.catalog.db."""

from __future__ import annotations

from alembic import context

from storage_core.catalog.db import VERSION_TABLE
from storage_core.catalog.models import Base

connection = context.config.attributes["connection"]
# its own version table name, so sharing a database by mistake never confuses two tools
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
