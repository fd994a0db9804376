"""A stored Parquet object read as a stream of Arrow record batches, by range requests or
from the verified local disk cache, as `CachePolicy` decides.

Streaming: one suffix GET learns size, ETag and footer (an object no larger than that tail
is then read from it, no other request); each row group's projected column
chunks are then fetched as coalesced ranges, in parallel, `row_groups_ahead` groups ahead
of the consumer, every request pinned to the ETag of the first (an object replaced mid-read
raises PreconditionFailed, versions never mix). A row group's bytes are dropped once its
batches are handed out, so memory stays about `row_groups_ahead + 1` row groups of the
projected columns (compressed) plus one decoded batch, whatever the object's size. Pages that carry a CRC are checked.

Cached: the whole object is copied once into `DiskCache` (size and CRC32C checked against
what the catalog or the store recorded, and checked again on every later hit) and read
from local disk.

`CachePolicy` (the roboto seed's names): NEVER streams; ALWAYS caches; ADAPTIVE reuses an
entry already cached, else caches when the read projects at least `cache_share` of the
file's column-chunk bytes (then nearly the whole object is fetched anyway, and one
sequential copy costs fewer requests than many ranges) and streams when it projects less.
The seed counts columns; Ferry weighs their bytes, which is what the ranges cost.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage_core.errors import ConfigError
from storage_core.formats.parquet import PARQUET_TAIL_SIZE, open_parquet_footer
from storage_core.ranges.cache import CachedObject, DiskCache
from storage_core.ranges.plan import ByteRange, missing
from storage_core.ranges.reader import RangeReader
from storage_core.stores.base import GetRangeAndTail

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_CACHE_SHARE = 0.5
DEFAULT_ROW_GROUPS_AHEAD = 2


class CachePolicy(str, enum.Enum):
    """Whether a read copies the object to the local disk cache first (see module)."""

    ADAPTIVE = "adaptive"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class ParquetRead:
    """An opened read: the projected schema, the batches (lazily read), and where from."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    row_groups: tuple[int, ...]  # the row groups read, after `keep_row_group`
    cached: CachedObject | None  # the verified local copy read, or None when streamed
    projected_bytes: int  # compressed bytes of the projected column chunks
    total_bytes: int  # compressed bytes of every column chunk


def present_columns(metadata: pq.FileMetaData, columns: Sequence[str] | None, *, only_present: bool = False) -> list[str]:
    """The top-level `columns` to read (all when None). ConfigError names a column the file
    does not have, unless `only_present` leaves such columns out."""
    names = metadata.schema.to_arrow_schema().names
    if columns is None:
        return list(names)
    absent = [name for name in columns if name not in names]
    if absent and not only_present:
        raise ConfigError(f"no column {absent[0]!r} in this Parquet file (it has {', '.join(names)})")
    return [name for name in columns if name in names]


def leaf_columns(metadata: pq.FileMetaData, columns: Sequence[str]) -> list[int]:
    """Indices of the leaf columns under the top-level `columns`."""
    chosen = set(columns)
    return [i for i in range(metadata.num_columns)
            if metadata.schema.column(i).path.split(".", 1)[0] in chosen]


def chunk_ranges(metadata: pq.FileMetaData, group: int, leaves: Sequence[int]) -> list[ByteRange]:
    """The byte ranges of row group `group`'s column chunks for `leaves` (dictionary page
    included), start inclusive, end exclusive."""
    row_group = metadata.row_group(group)
    ranges = []
    for leaf in leaves:
        chunk = row_group.column(leaf)
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
            start = min(start, chunk.dictionary_page_offset)
        ranges.append((start, start + chunk.total_compressed_size))
    return ranges


def _bytes(metadata: pq.FileMetaData, groups: Sequence[int], leaves: Sequence[int]) -> int:
    return sum(metadata.row_group(g).column(leaf).total_compressed_size for g in groups for leaf in leaves)


def _use_cache(policy: CachePolicy, cache: DiskCache | None, share: float, cache_share: float) -> bool:
    if policy is CachePolicy.NEVER:
        return False
    if cache is None:
        if policy is CachePolicy.ALWAYS:
            raise ConfigError("CachePolicy.ALWAYS needs a DiskCache")
        return False
    return policy is CachePolicy.ALWAYS or share >= cache_share


def read_parquet_batches(
    store: GetRangeAndTail,
    key: str,
    *,
    store_uri: str = "",
    columns: Sequence[str] | None = None,
    only_present: bool = False,
    keep_row_group: Callable[[pq.RowGroupMetaData], bool] | None = None,
    policy: CachePolicy = CachePolicy.ADAPTIVE,
    cache: DiskCache | None = None,
    crc32c: int | None = None,
    cache_share: float = DEFAULT_CACHE_SHARE,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    row_groups_ahead: int = DEFAULT_ROW_GROUPS_AHEAD,
    max_workers: int = 8,
    tail_size: int = PARQUET_TAIL_SIZE,
) -> ParquetRead:
    """Open `key` in `store` (its URI `store_uri` names cache entries) and return its batches
    (see module). `columns` projects top-level columns (`only_present`: those the file has,
    for a caller that fills the others, else ConfigError); `keep_row_group(meta)` skips row
    groups whose statistics rule them out; `crc32c` is the catalog's record, checked when
    the object is cached. Opening costs one GET of `tail_size` bytes (a second when the
    footer outgrows it); a file no larger than the tail needs no other request."""
    import pyarrow.parquet as pq

    reader = RangeReader.from_store(store, key, tail_size=tail_size, max_workers=max_workers)
    try:
        metadata, _ = open_parquet_footer(reader)
        columns = present_columns(metadata, columns, only_present=only_present)
        leaves = leaf_columns(metadata, columns)
        groups = tuple(g for g in range(metadata.num_row_groups)
                       if keep_row_group is None or keep_row_group(metadata.row_group(g)))
        everything = range(metadata.num_columns)
        projected, total = _bytes(metadata, groups, leaves), _bytes(metadata, range(metadata.num_row_groups), everything)
        schema = _projected(metadata.schema.to_arrow_schema(), columns)
        entry = None
        if cache is not None and policy is not CachePolicy.NEVER and reader.etag:
            entry = cache.lookup(store_uri, key, reader.etag)
        if entry is None and _use_cache(policy, cache, projected / total if total else 1.0, cache_share):
            entry = cache.fill(reader, store_uri, key, crc32c_expected=crc32c)  # type: ignore[union-attr]
    except BaseException:
        reader.close()
        raise
    whole = reader.cached(0, reader.size) if entry is None and reader.tail_start == 0 else None
    if entry is not None or whole is not None:
        reader.close()
        # a local file, or an object the opening GET brought whole: read by pyarrow itself,
        # not through a Python file object (whose every read holds the GIL and copies)
        import pyarrow as pa

        source = entry.path if entry is not None else pa.BufferReader(pa.py_buffer(whole))
        local = pq.ParquetFile(source, metadata=metadata if entry is None else None, page_checksum_verification=True)
        batches = local.iter_batches(batch_size=batch_rows, row_groups=list(groups), columns=columns) if groups else iter(())
    else:
        batches = _streamed(reader, metadata, groups, leaves, columns, batch_rows=batch_rows, ahead=row_groups_ahead)
    return ParquetRead(schema, batches, groups, entry, projected, total)


def _projected(schema: pa.Schema, columns: Sequence[str]) -> pa.Schema:
    """`schema` projected to `columns`, in their order."""
    import pyarrow as pa

    return pa.schema([schema.field(name) for name in columns], metadata=schema.metadata)


def _streamed(
    reader: RangeReader,
    metadata: pq.FileMetaData,
    groups: Sequence[int],
    leaves: Sequence[int],
    columns: Sequence[str] | None,
    *,
    batch_rows: int,
    ahead: int,
) -> Iterator[pa.RecordBatch]:
    """Row groups fetched `ahead` of the consumer, each dropped once read."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(reader, metadata=metadata, page_checksum_verification=True)
    pending: deque[tuple[int, list[ByteRange], Future[None] | None]] = deque()
    queue = deque(groups)
    ahead_pool: ThreadPoolExecutor | None = None  # made on the first group the tail did not cover

    def fetch_ahead(ranges: list[ByteRange]) -> Future[None] | None:
        nonlocal ahead_pool
        cached = reader.regions
        if not any(missing(cached, start, end) for start, end in ranges):  # the tail holds them: no thread
            return None
        if ahead_pool is None:
            ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="ferry-parquet-ahead")
        return ahead_pool.submit(reader.prefetch_ranges, ranges)

    try:
        while queue or pending:
            while queue and len(pending) <= ahead:
                group = queue.popleft()
                ranges = chunk_ranges(metadata, group, leaves)
                pending.append((group, ranges, fetch_ahead(ranges)))
            group, ranges, fetched = pending.popleft()
            if fetched is not None:
                fetched.result()
            # batch by batch, not the whole row group at once: a group of a million rows
            # would otherwise sit decoded in memory (and cost fresh pages) before the first batch
            yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
            for start, end in ranges:
                reader.discard(start, end)
    finally:
        if ahead_pool is not None:  # a consumer that stops early fetches no more
            ahead_pool.shutdown(wait=True, cancel_futures=True)
        reader.close()  # after the prefetch thread is done with it


__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_CACHE_SHARE",
    "CachePolicy",
    "ParquetRead",
    "chunk_ranges",
    "leaf_columns",
    "present_columns",
    "read_parquet_batches",
]
