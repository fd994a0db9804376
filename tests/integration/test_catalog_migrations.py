"""The Alembic migrations build exactly the schema the models declare, on SQLite and
PostgreSQL, and downgrade cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from storage_core.catalog.db import MIGRATIONS, Catalog
from storage_core.catalog.models import Base


def _config(connection) -> Config:  # noqa: ANN001
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def test_migrations_match_the_models(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    with catalog.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": "ferry_alembic_version"})
        diff = [d for d in compare_metadata(context, Base.metadata) if d[0] != "remove_table"]
    catalog.dispose()
    assert diff == []


def test_migrations_downgrade_to_nothing_and_back(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    with catalog.engine.begin() as connection:
        command.downgrade(_config(connection), "base")
    with catalog.engine.begin() as connection:
        command.upgrade(_config(connection), "head")
    catalog.dispose()
