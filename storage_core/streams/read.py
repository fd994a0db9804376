"""Reading a stream's committed rows: exactly what the Delta log names, batch by batch.

The table's Parquet files are read through pyarrow's dataset over delta-rs's view of the
log, so a file written by a commit that never landed is never read, and memory stays one
batch (plus the scanner's read-ahead) whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from storage_core.errors import ConfigError, StorageUnavailable, one_line
from storage_core.streams.table import TableLocation


def open_dataset(location: TableLocation) -> ds.Dataset:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        return DeltaTable(location.uri, storage_options=location.storage_options).to_pyarrow_dataset()
    except (DeltaError, OSError) as exc:
        raise StorageUnavailable(f"stream table {location.uri}: {one_line(exc)}") from exc


def read_batches(
    location: TableLocation,
    *,
    columns: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    time_column: str = "time",
    batch_rows: int = 65_536,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, batches) of the committed rows; `since` (inclusive) and `until` (exclusive)
    filter on `time_column`. ConfigError names a column the table does not have."""
    dataset = open_dataset(location)
    names = dataset.schema.names
    wanted = columns or names
    missing = [c for c in wanted if c not in names] + ([time_column] if (since or until) and time_column not in names else [])
    if missing:
        raise ConfigError(f"no column {missing[0]!r} in {location.uri} (it has {', '.join(names)})")
    condition = None
    if since is not None:
        condition = pc.field(time_column) >= pa.scalar(since)
    if until is not None:
        upper = pc.field(time_column) < pa.scalar(until)
        condition = upper if condition is None else condition & upper
    scanner = dataset.scanner(columns=wanted, filter=condition, batch_size=batch_rows)
    return scanner.projected_schema, iter(scanner.to_batches())


__all__ = ["open_dataset", "read_batches"]
