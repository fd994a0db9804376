"""Rechunk a product (same key, same rows, new files) and collect garbage.

Rechunking writes a new attempt of the same key and publishes it by the same
compare-and-set as a derive; the old attempt stays readable until gc. Garbage is what no
committed product uses: attempts that failed, ran out their lease or were superseded, and
products no recording reaches any more (an input object is gone or holds other bytes),
each only after a grace period, so a reader that opened it a moment ago can finish.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from storage_core.catalog import products as catalog_products
from storage_core.catalog.db import Catalog
from storage_core.catalog.models import utcnow
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import ConfigError, ProductNotFound, one_line
from storage_core.keys import join_key
from storage_core.products.derive import DEFAULT_LEASE, _Lease, abandon_attempt, product_definition, start_attempt
from storage_core.products.publish import AttemptWriter, delete_prefix, read_manifest
from storage_core.stores.registry import open_store


@dataclass(frozen=True)
class RechunkResult:
    key: str
    attempt: str
    replaced: str
    files_before: int
    files: int
    rows: int


def rechunk_product(catalog: Catalog, key: str, *, chunk_rows: int, settings: FerrySettings | None = None,
                    lease: timedelta = DEFAULT_LEASE) -> RechunkResult:
    """Rewrite product `key`'s files with at most `chunk_rows` rows each (one old file in
    memory at a time); the key and every dataset's rows, in order, stay the same."""
    if chunk_rows < 1:
        raise ConfigError("--chunk-rows must be at least 1")
    settings = settings or load_settings()
    info = catalog_products.get_product(catalog, key)
    old = info.committed
    if old is None:
        raise ProductNotFound(f"product {info.key[:12]} has no committed data to rechunk")
    old_store, _ = open_store(old.store_uri, settings)
    manifest = read_manifest(old_store, old.prefix)
    definition = product_definition(info.product)
    untracked = {**manifest.settings, "chunk_rows": chunk_rows}
    claimed = start_attempt(catalog, definition, key=info.key, recording_id=info.recording_id, document=info.lineage,
                            settings=settings, untracked=untracked, lease=lease, wait=0)
    store, _, prefix, replaces = claimed
    attempt_id = prefix.rsplit("/", 1)[-1]
    writer = AttemptWriter(store, prefix, info.key, attempt_id, info.product, info.lineage, untracked)
    renew = _Lease(catalog, attempt_id, lease)
    compression = untracked.get("compression", "zstd")
    try:
        for dataset, files in manifest.datasets().items():
            pending: list[pa.RecordBatch] = []
            pending_rows = part = 0
            schema = None

            def flush() -> None:
                nonlocal pending, pending_rows, part
                table = pa.Table.from_batches(pending, schema=schema)
                out = io.BytesIO()
                pq.write_table(table, out, compression=None if compression == "none" else compression)
                writer.put_file(f"{dataset}/part-{part:05d}.parquet", out.getvalue(), dataset=dataset, rows=table.num_rows,
                                schema=tuple((f.name, str(f.type)) for f in table.schema))
                pending, pending_rows, part = [], 0, part + 1
                renew()

            for f in files:
                data = old_store.get_range(join_key(old.prefix, f.path), 0, f.size)
                parquet = pq.ParquetFile(io.BytesIO(data))
                schema = schema or parquet.schema_arrow
                for batch in parquet.iter_batches(batch_size=min(chunk_rows, 65_536)):
                    while batch.num_rows:
                        take = min(batch.num_rows, chunk_rows - pending_rows)
                        pending.append(batch.slice(0, take))
                        pending_rows += take
                        batch = batch.slice(take)
                        if pending_rows == chunk_rows:
                            flush()
            if pending_rows:
                flush()
        new = writer.finish()
        catalog_products.commit_attempt(catalog, attempt_id, key=info.key, replaces=replaces,
                                        files=len(new.files), rows=new.rows, size=new.bytes)
    except BaseException as exc:
        abandon_attempt(catalog, store, attempt_id, prefix, one_line(exc) if isinstance(exc, Exception) else type(exc).__name__)
        raise
    return RechunkResult(info.key, attempt_id, old.id, len(manifest.files), len(new.files), new.rows)


@dataclass(frozen=True)
class GarbageReport:
    attempts: list[str]
    products: list[str]
    objects_deleted: int
    dry_run: bool


def collect_garbage(catalog: Catalog, *, older_than: timedelta, settings: FerrySettings | None = None,
                    dry_run: bool = False, now: datetime | None = None) -> GarbageReport:
    """Delete (files first, then rows) attempts nothing uses and products no recording
    reaches, idle for longer than `older_than`. A committed attempt of a reachable product
    is never touched."""
    settings = settings or load_settings()
    before = (now or utcnow()) - older_than
    attempts = catalog_products.garbage_attempts(catalog, before=before)
    inputs = catalog_products.current_inputs(catalog)
    unreachable = []
    for info in catalog_products.list_products(catalog):
        idle_since = info.committed_at or info.created_at
        if idle_since >= before or info.running is not None:
            continue
        sources = [i for i in info.lineage.get("inputs", []) if "uri" in i]
        if any((i["uri"], i["size"], i["crc32c"]) not in inputs for i in sources):
            unreachable.append(info)
    deleted = 0
    if not dry_run:
        for attempt in attempts:
            store, _ = open_store(attempt.store_uri, settings)
            deleted += delete_prefix(store, attempt.prefix)
        catalog_products.forget_attempts(catalog, [a.id for a in attempts])
        for info in unreachable:
            for attempt in info.attempts:
                store, _ = open_store(attempt.store_uri, settings)
                deleted += delete_prefix(store, attempt.prefix)
            catalog_products.forget_product(catalog, info.key)
    return GarbageReport([a.id for a in attempts], [p.key for p in unreachable], deleted, dry_run)


__all__ = ["GarbageReport", "RechunkResult", "collect_garbage", "rechunk_product"]
