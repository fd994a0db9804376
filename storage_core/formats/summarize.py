"""Summarize one stored object by its modality, and say what it cost (requests, bytes).

The catalog path calls `summarize_object(store, key, modality)`; `ferry summarize URI`
calls `summarize_uri(uri)`, which needs no catalog: the modality comes from the suffix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from storage_core.config import FerrySettings
from storage_core.errors import ConfigError, ObjectNotFound
from storage_core.formats.mcap_summary import read_mcap_summary
from storage_core.formats.parquet import PARQUET_TAIL_SIZE, read_parquet_summary
from storage_core.keys import parse_uri
from storage_core.modalities import SUMMARIZABLE, modality_of
from storage_core.ranges.reader import DEFAULT_TAIL_SIZE, RangeReader
from storage_core.stores.base import GetRangeAndTail
from storage_core.stores.local import LocalStore

@dataclass(frozen=True)
class ObjectSummary:
    """A summary as JSON-ready data, and what reading it took."""

    uri: str
    modality: str
    summary: dict[str, Any]
    requests: int
    bytes_fetched: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "modality": self.modality,
            "requests": self.requests,
            "bytes_fetched": self.bytes_fetched,
            "seconds": self.seconds,
            "summary": self.summary,
        }


def summarize_object(store: GetRangeAndTail, key: str, modality: str, *, uri: str | None = None) -> ObjectSummary:
    """Read the summary of `key` as `modality` ("mcap" or "parquet") through ranges.

    MCAP: ≤ 2 requests when the file has a summary, else a streaming scan (flagged
    `source="scan"`). Parquet: ≤ 2 requests (the footer). Raises `ConfigError` for another
    modality, `NotMcapFile`/`NotParquetFile`/`FormatError` for bytes of the wrong shape,
    and the store's errors (`ObjectNotFound`, `StorageUnavailable`, …) as they are.
    """
    started = time.monotonic()
    name = uri or f"{getattr(store, 'uri', type(store).__name__)}/{key}"
    if modality == "mcap":
        reader, read = RangeReader.from_store(store, key, tail_size=DEFAULT_TAIL_SIZE), read_mcap_summary
    elif modality == "parquet":
        reader, read = RangeReader.from_store(store, key, tail_size=PARQUET_TAIL_SIZE), read_parquet_summary
    else:
        raise ConfigError(f"{name}: cannot summarize {modality!r} objects (only mcap and parquet)")
    try:
        data = read(reader).to_dict()
        stats = reader.stats
    finally:
        reader.close()
    return ObjectSummary(name, modality, data, stats.requests, stats.bytes_fetched, round(time.monotonic() - started, 6))


def summarize_uri(uri: str, settings: FerrySettings | None = None) -> ObjectSummary:
    """Summarize one object named by `s3://bucket/key` or `file:///abs/path`, by its suffix."""
    from storage_core.stores.registry import open_store  # boto3 only for S3 URIs

    location = parse_uri(uri)
    if location.scheme == "file":
        path = PurePosixPath(location.root)
        store, key = LocalStore(str(path.parent)), path.name
    else:
        if not location.prefix:
            raise ConfigError(f"invalid object URI {uri!r}: it names a bucket, not an object")
        store, key = open_store(location, settings)
    modality = modality_of(key)
    if modality not in SUMMARIZABLE:
        raise ConfigError(f"{uri}: cannot summarize this object (only .mcap and .parquet files)")
    try:
        return summarize_object(store, key, modality, uri=uri)
    except ObjectNotFound as exc:
        raise ObjectNotFound(f"no such object: {uri}", key=key) from exc


__all__ = ["ObjectSummary", "summarize_object", "summarize_uri"]
