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


def test_processes_opening_a_new_catalog_at_once_take_turns_migrating(catalog_url: str) -> None:
    import subprocess
    import sys

    opener = "import sys; from storage_core.catalog.db import Catalog; Catalog(sys.argv[1])"
    children = [subprocess.Popen([sys.executable, "-c", opener, catalog_url], stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
    errors = [child.communicate(timeout=120)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], errors
