"""What `download` accepts: DownloadSources, or the catalog's query results mapped onto them.

A RecordingResult stands for all its objects, an ObjectInfo for one; each object's store
is opened once per store URI (FERRY_* settings unless given).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Union

from storage_core.catalog.queries import RecordingResult
from storage_core.catalog.views import ObjectInfo
from storage_core.config import FerrySettings, load_settings
from storage_core.download.source import DownloadSource
from storage_core.errors import ConfigError
from storage_core.stores.registry import open_store

Target = Union[DownloadSource, RecordingResult, ObjectInfo]


def sources_of(target: Target | Iterable[Target], settings: FerrySettings | None = None) -> list[DownloadSource]:
    """`target` (one item or any iterable of them) as download sources, in order.

    Catalog results open their stores (one per store URI) with `settings`; settings are
    loaded only when a catalog result is among the targets.
    """
    items = [target] if isinstance(target, (DownloadSource, RecordingResult, ObjectInfo)) else list(target)
    stores: dict[str, object] = {}
    sources = []
    for item in items:
        if isinstance(item, DownloadSource):
            sources.append(item)
            continue
        if isinstance(item, RecordingResult):
            objects = item.objects
        elif isinstance(item, ObjectInfo):
            objects = (item,)
        else:
            raise ConfigError(f"download() takes query results (recordings or objects) or DownloadSources, "
                              f"not a {type(item).__name__}")
        for obj in objects:
            if obj.store_uri not in stores:
                settings = settings or load_settings()
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


__all__ = ["Target", "sources_of"]
