"""What to download: one stored object and the catalog facts that decide where it lands.

A recording is a folder of files from one device. A raw modality (video, audio) is many
segment files under one key prefix (`segmented=True`; `relative_path` is the segment's path
below that prefix). A processed artifact is a single file (`segmented=False`) and is
written as `{modality}.{ext}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage_core.errors import ObjectNotFound
from storage_core.keys import validate_key
from storage_core.stores.base import List


@dataclass(frozen=True, kw_only=True)
class DownloadSource:
    """One object to download. The catalog's flow maps its rows onto this.

    `size` and `crc32c` are what the catalog recorded; the download checks the bytes
    against them (`None`: not recorded; the store's own CRC32C is used when it has one).
    Names are validated when the download is planned, not here, so that every bad
    source of a call is reported together.
    """

    store: Any  # Head + GetRange; GetRangeInto and CopyRange are used when it has them
    key: str
    size: int | None
    crc32c: int | None = None
    device_id: str
    recording: str
    modality: str
    segmented: bool
    relative_path: str = ""  # segments only: the path below the modality's prefix
    ext: str = ""  # processed artifacts only: `mcap`, `parquet`, `mp4` (a leading dot is ignored)


def expand_prefix(
    store: List,
    prefix: str,
    *,
    device_id: str,
    recording: str,
    modality: str,
) -> list[DownloadSource]:
    """Every segment stored under `prefix`, as sources in key order (ursa's raw path).

    Raises ObjectNotFound when the prefix holds nothing: a modality the catalog knows
    with no bytes behind it is a catalog or upload bug, not an empty download.
    """
    base = validate_key(prefix.strip("/")) + "/"
    sources = [
        DownloadSource(
            store=store,
            key=meta.key,
            size=meta.size,
            crc32c=meta.crc32c,
            device_id=device_id,
            recording=recording,
            modality=modality,
            segmented=True,
            relative_path=meta.key[len(base):],
        )
        for meta in store.list(base)
    ]
    if not sources:
        raise ObjectNotFound(f"no segments under {getattr(store, 'uri', '?')}/{base}", key=base)
    return sorted(sources, key=lambda s: s.key)


__all__ = ["DownloadSource", "expand_prefix"]
