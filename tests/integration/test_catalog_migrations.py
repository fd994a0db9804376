"""The Alembic migrations build exactly the schema the models declare, on SQLite and
PostgreSQL, and downgrade cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

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


def _schema(connection) -> dict[str, object]:  # noqa: ANN001
    """What the database holds: every table's columns (name, nullable) and indexes."""
    inspector = inspect(connection)
    tables = {}
    for table in sorted(inspector.get_table_names()):
        if table == "ferry_alembic_version":
            continue
        columns = sorted((c["name"], c["nullable"]) for c in inspector.get_columns(table))
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table))
        tables[table] = {"columns": columns, "indexes": indexes}
    return tables


def _partial_index_predicate(connection) -> str:  # noqa: ANN001
    """The WHERE clause of the index that lets one active item claim a destination."""
    if connection.dialect.name == "sqlite":
        sql = "SELECT sql FROM sqlite_master WHERE name = 'uq_item_active_destination'"
    else:
        sql = "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_item_active_destination'"
    return connection.execute(text(sql)).scalar_one().split("WHERE", 1)[1]


def test_migrations_downgrade_to_nothing_and_back(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    with catalog.engine.connect() as connection:
        before, predicate = _schema(connection), _partial_index_predicate(connection)
    with catalog.engine.begin() as connection:
        command.downgrade(_config(connection), "base")
    with catalog.engine.connect() as connection:
        assert _schema(connection) == {}
    with catalog.engine.begin() as connection:
        command.upgrade(_config(connection), "head")
    with catalog.engine.connect() as connection:
        after = _schema(connection)
        assert after == before and _partial_index_predicate(connection) == predicate
        context = MigrationContext.configure(connection, opts={"version_table": "ferry_alembic_version"})
        assert [d for d in compare_metadata(context, Base.metadata) if d[0] != "remove_table"] == []
    items = dict(after["transaction_items"]["columns"])
    assert items["source_kind"] is False and items["skip_reason"] is True and "pending" in predicate
    catalog.dispose()


ITEM = ("INSERT INTO transaction_items (transaction_id, source_path, device_id, recording, relative_path, modality, "
        "store_uri, key, size, status, source_etag, error, updated_at) VALUES ('t1', :path, 'cam', 'r', :key, 'other', "
        "'s3://b', :key, 1, :status, :etag, :error, CURRENT_TIMESTAMP)")


def test_0004_backfills_source_kind_and_skip_reason_and_downgrades_to_the_prefix(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    with catalog.engine.begin() as connection:
        command.downgrade(_config(connection), "0003")
    with catalog.engine.begin() as connection:  # the rows 0003 wrote
        connection.execute(text("INSERT INTO transactions (id, origination, destination, status, created_at, updated_at) "
                                "VALUES ('t1', 'o', 's3://b', 'pending', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        rows = [
            ("device:cam/r/a.bin", "a", "uploading", None, None),
            ("s3://landing/cam/r/b.bin", "b", "pending", "etag-b", None),
            ("/landing/cam/r/c.bin", "c", "skipped", None, "being uploaded by transaction t0"),
            ("/landing/cam/r/d.bin", "d", "skipped", None, "identical bytes already stored"),
        ]
        for path, key, status, etag, error in rows:
            connection.execute(text(ITEM), {"path": path, "key": key, "status": status, "etag": etag, "error": error})
    with catalog.engine.begin() as connection:
        command.upgrade(_config(connection), "head")
    query = text("SELECT key, source_kind, source_path, skip_reason FROM transaction_items ORDER BY key")
    with catalog.engine.connect() as connection:
        assert [tuple(r) for r in connection.execute(query)] == [
            ("a", "device", "cam/r/a.bin", None),
            ("b", "object", "s3://landing/cam/r/b.bin", None),
            ("c", "file", "/landing/cam/r/c.bin", "busy"),
            ("d", "file", "/landing/cam/r/d.bin", "identical"),
        ]
        upgraded = _schema(connection)
    with catalog.engine.begin() as connection:
        command.downgrade(_config(connection), "0003")
    with catalog.engine.connect() as connection:
        columns = [name for name, _ in _schema(connection)["transaction_items"]["columns"]]
        assert "source_kind" not in columns and "skip_reason" not in columns
        paths = connection.execute(text("SELECT source_path FROM transaction_items ORDER BY key")).scalars().all()
        assert paths == ["device:cam/r/a.bin", "s3://landing/cam/r/b.bin", "/landing/cam/r/c.bin", "/landing/cam/r/d.bin"]
        assert "pending" in _partial_index_predicate(connection)  # the claim index survived the column changes
    with catalog.engine.begin() as connection:
        command.upgrade(_config(connection), "head")
    with catalog.engine.connect() as connection:
        assert _schema(connection) == upgraded
    catalog.dispose()


def test_processes_opening_a_new_catalog_at_once_take_turns_migrating(catalog_url: str) -> None:
    import subprocess
    import sys

    opener = "import sys; from storage_core.catalog.db import Catalog; Catalog(sys.argv[1])"
    children = [subprocess.Popen([sys.executable, "-c", opener, catalog_url], stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
    errors = [child.communicate(timeout=120)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], errors
