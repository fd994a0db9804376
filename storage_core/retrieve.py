"""Three verbs over the catalog: `query` what is stored, `get` a small object's bytes,
`download` any selection to disk.

    from storage_core.retrieve import query, get, download

    found = query(device_id="robot-01", topic="/camera/*")
    header = get(found[0].objects[0], max_bytes=1 << 20)
    paths = download(found, "/data/restore", layout="by_modality", resume=True)

Each verb opens the catalog (FERRY_DATABASE_URL) and the stores the catalog points at
unless given them. Bytes are always checked against what the catalog recorded: size and
CRC32C, read pinned to the ETag seen first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Union

from storage_core.catalog.db import Catalog, open_default_catalog
from storage_core.catalog.queries import RecordingResult, find_object, find_recordings
from storage_core.catalog.views import ObjectInfo
from storage_core.checksums import crc32c
from storage_core.config import FerrySettings, load_settings
from storage_core.download.api import download as download_sources
from storage_core.download.plan import Layout, PlannedWrite, plan_writes
from storage_core.download.source import DownloadSource
from storage_core.download.transfer import OnProgress
from storage_core.errors import ConfigError, IntegrityError
from storage_core.stores.registry import open_store

GET_LIMIT = 64 * 1024 * 1024  # get() holds the bytes in memory: past this, download() them

Target = Union[RecordingResult, ObjectInfo]


def query(
    *,
    device_id: str | None = None,
    recording: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    modality: str | None = None,
    topic: str | None = None,
    limit: int | None = None,
    among: Iterable[tuple[str, str]] | None = None,
    catalog: Catalog | None = None,
) -> list[RecordingResult]:
    """The recordings matching every filter given (see find_recordings for each one)."""
    return find_recordings(
        catalog or open_default_catalog(),
        device_id=device_id, recording=recording, since=since, until=until,
        modality=modality, topic=topic, limit=limit, among=among,
    )


def get(
    target: ObjectInfo | str,
    *,
    max_bytes: int = GET_LIMIT,
    catalog: Catalog | None = None,
    settings: FerrySettings | None = None,
) -> bytes:
    """The bytes of one small stored object (an ObjectInfo, or its URI), verified.

    Refuses objects over `max_bytes` before reading anything: they belong on disk.
    """
    if isinstance(target, str):
        target = find_object(catalog or open_default_catalog(), target)
    if not isinstance(target, ObjectInfo):
        raise ConfigError(f"get() takes one stored object or its URI, not a {type(target).__name__}; "
                          f"use download() for recordings")
    if target.size > max_bytes:
        raise ConfigError(f"{target.uri} is {target.size:,} bytes, over get()'s limit of {max_bytes:,}; "
                          f"use download() to stream it to disk, or raise max_bytes")
    store, _ = open_store(target.store_uri, settings)
    data = store.get_range(target.key, 0, target.size) if target.size else b""  # one request: nothing to pin
    if len(data) != target.size or crc32c(data) != target.crc32c:
        raise IntegrityError(f"{target.uri}: the stored bytes do not match the catalog "
                             f"({len(data)} bytes, CRC32C {crc32c(data):08x}; recorded {target.size} bytes, "
                             f"{target.crc32c:08x})", key=target.key)
    return data


def download(
    target: Target | Iterable[Target],
    dest: str | os.PathLike[str],
    *,
    layout: Layout = "by_recording",
    overwrite: bool = False,
    resume: bool = False,
    on_progress: OnProgress | None = None,
    on_plan: Callable[[list[PlannedWrite]], None] | None = None,
    settings: FerrySettings | None = None,
    **tuning: int,
) -> list[Path]:
    """Write one result (a recording or an object) or any iterable of them under `dest`;
    return every path written, flat and in a deterministic order (recordings as given,
    modalities as first seen, then paths).

    Every destination is planned and checked before the first byte moves (see
    storage_core.download.plan); `overwrite` and `resume` as in
    storage_core.download.download, and so are the callbacks. `tuning`: chunk_size,
    max_workers, max_files.
    """
    return download_sources(sources_of(target, settings), dest, layout=layout, overwrite=overwrite,
                            resume=resume, on_progress=on_progress, on_plan=on_plan, **tuning)


def plan_download(
    target: Target | Iterable[Target],
    dest: str | os.PathLike[str],
    *,
    layout: Layout = "by_recording",
    overwrite: bool = False,
    resume: bool = False,
    settings: FerrySettings | None = None,
) -> list[PlannedWrite]:
    """Only the plan of `download` (nothing written): every problem raised at once."""
    return plan_writes(sources_of(target, settings), dest, layout=layout, overwrite=overwrite, resume=resume)


def sources_of(target: Target | Iterable[Target], settings: FerrySettings | None = None) -> list[DownloadSource]:
    """The objects of `target` as download sources, one store opened per store URI."""
    settings = settings or load_settings()
    items = [target] if isinstance(target, (RecordingResult, ObjectInfo)) else list(target)
    stores: dict[str, object] = {}
    sources = []
    for item in items:
        if isinstance(item, RecordingResult):
            objects = item.objects
        elif isinstance(item, ObjectInfo):
            objects = (item,)
        else:
            raise ConfigError(f"download() takes query results (recordings or objects), not a {type(item).__name__}")
        for obj in objects:
            if obj.store_uri not in stores:
                stores[obj.store_uri] = open_store(obj.store_uri, settings)[0]
            sources.append(_source(obj, stores[obj.store_uri]))
    return sources


def _source(obj: ObjectInfo, store: object) -> DownloadSource:
    if obj.device_id is None or obj.recording is None:
        raise ConfigError(f"{obj.uri} belongs to no recording in the catalog; it cannot be placed by a layout")
    path = PurePosixPath(obj.relative_path)
    if obj.segmented:
        parts = path.parts
        # `video/front/0001.h264` of modality video lands in `video/front/0001.h264`, not `video/video/...`
        relative = "/".join(parts[1:]) if len(parts) > 1 and parts[0] == obj.modality else obj.relative_path
        return DownloadSource(store=store, key=obj.key, size=obj.size, crc32c=obj.crc32c, device_id=obj.device_id,
                              recording=obj.recording, modality=obj.modality, segmented=True, relative_path=relative)
    return DownloadSource(store=store, key=obj.key, size=obj.size, crc32c=obj.crc32c, device_id=obj.device_id,
                          recording=obj.recording, modality=obj.modality, segmented=False, ext=path.suffix)


__all__ = ["GET_LIMIT", "download", "get", "plan_download", "query", "sources_of"]
