"""Where a product's files can be read from, nearest first: a local cache folder
(`FERRY_PRODUCTS_CACHE`), then the store the catalog says holds the committed attempt.

`get_product` takes the nearest copy whose every file matches the manifest (size and
CRC32C), fills the nearer frontends it passed on the way, and writes the files to a folder.
Every file lands through `NAME.part` + fsync + rename: never a partial file at a final path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from storage_core.catalog.db import Catalog
from storage_core.catalog.products import get_product as catalog_get_product
from storage_core.checksums import crc32c
from storage_core.config import FerrySettings, load_settings
from storage_core.diskio import write_atomic
from storage_core.errors import IntegrityError, ObjectNotFound, ProductNotFound
from storage_core.keys import join_key
from storage_core.products.publish import MANIFEST, Manifest, ProductFile, read_manifest
from storage_core.stores.registry import open_store

CACHE_ENV = "FERRY_PRODUCTS_CACHE"


def products_cache() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser().resolve() if value else None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _check(file: ProductFile, data: bytes, where: str) -> bytes:
    if len(data) != file.size or crc32c(data) != file.crc32c:
        raise IntegrityError(f"{where}: {file.path} does not match its manifest (size or CRC32C)")
    return data


@dataclass(frozen=True)
class CacheFolder:
    """`<root>/<key>/<attempt>/…`: a committed attempt's files and manifest, as in the store."""

    root: Path

    def folder(self, manifest_key: str, attempt: str) -> Path:
        return self.root / manifest_key / attempt

    def load(self, key: str, attempt: str) -> Manifest | None:
        """The cached manifest when every file is there and verified; else None."""
        folder = self.folder(key, attempt)
        try:
            manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
            for f in manifest.files:
                _check(f, (folder / f.path).read_bytes(), f"cache {folder}")
        except (OSError, IntegrityError):
            return None
        return manifest


@dataclass(frozen=True)
class GetResult:
    key: str
    attempt: str
    source: str  # "cache" or the store URI
    files: int
    rows: int
    bytes: int
    to: Path


def get_product(catalog: Catalog, key: str, to: Path, *, settings: FerrySettings | None = None,
                cache: Path | None = None) -> GetResult:
    """Write the committed product `key` (or a unique prefix of it) under `to`: one folder
    per dataset and the manifest. Nearest verified copy first; a store copy fills the cache."""
    settings = settings or load_settings()
    info = catalog_get_product(catalog, key)
    attempt = info.committed
    if attempt is None:
        raise ProductNotFound(f"product {info.key[:12]} has no committed data")
    cache = cache if cache is not None else products_cache()
    folder = CacheFolder(cache) if cache is not None else None
    manifest = folder.load(info.key, attempt.id) if folder is not None else None
    source = "cache"
    if manifest is not None:
        base = folder.folder(info.key, attempt.id)

        def read(f: ProductFile) -> bytes:
            return _check(f, (base / f.path).read_bytes(), f"cache {base}")
    else:
        store, _ = open_store(attempt.store_uri, settings)
        source = attempt.store_uri
        try:
            manifest = read_manifest(store, attempt.prefix)
        except ObjectNotFound:
            raise IntegrityError(f"product {info.key[:12]}: committed attempt {attempt.id} has no manifest") from None

        def read(f: ProductFile) -> bytes:
            data = _check(f, store.get_range(join_key(attempt.prefix, f.path), 0, f.size), attempt.store_uri)
            if folder is not None:
                _write_atomic(folder.folder(info.key, attempt.id) / f.path, data)
            return data
    to = Path(to)
    for f in manifest.files:  # one file in memory at a time: a file is at most one chunk
        _write_atomic(to / f.path, read(f))
    if source != "cache" and folder is not None:
        _write_atomic(folder.folder(info.key, attempt.id) / MANIFEST, manifest.to_json())  # last: marks it whole
    _write_atomic(to / MANIFEST, manifest.to_json())
    return GetResult(info.key, attempt.id, source, len(manifest.files), manifest.rows, manifest.bytes, to)


__all__ = ["CACHE_ENV", "CacheFolder", "GetResult", "get_product", "products_cache"]
