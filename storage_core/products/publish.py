"""Writing one attempt's files, its manifest last, and checking a product against it.

Layout in the store (nothing is ever renamed into place):

    <prefix>/products/<product>/<key>/<attempt>/<dataset>/part-00000.parquet ...
    <prefix>/products/<product>/<key>/<attempt>/manifest.json       written last

Every file is stored with its CRC32C checked by the store where it can; the manifest lists
each file's path, size, CRC32C, rows and schema, and the time writing ended. An attempt
without a manifest is incomplete; one whose files disagree with it is broken. The catalog's
compare-and-set (storage_core.catalog.products.commit_attempt) is what publishes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from storage_core.checksums import crc32c
from storage_core.errors import FerryError, IntegrityError, ObjectNotFound, one_line
from storage_core.keys import join_key
from storage_core.stores.base import ObjectStore

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ferry.product/1"


@dataclass(frozen=True)
class ProductFile:
    path: str  # relative to the attempt prefix: "<dataset>/part-00000.parquet"
    dataset: str  # for `topics`: the topic
    size: int
    crc32c: int
    rows: int
    schema: tuple[tuple[str, str], ...]  # (column, Arrow type)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema": [list(c) for c in self.schema]}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ProductFile:
        return cls(
            path=value["path"], dataset=value["dataset"], size=int(value["size"]), crc32c=int(value["crc32c"]),
            rows=int(value["rows"]), schema=tuple((str(n), str(t)) for n, t in value["schema"]),
        )


@dataclass(frozen=True)
class Manifest:
    key: str
    attempt: str
    product: str
    lineage: dict[str, Any]
    settings: dict[str, Any]  # the untracked options the files were written with
    files: tuple[ProductFile, ...]
    writing_started: str
    writing_ended: str

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def datasets(self) -> dict[str, list[ProductFile]]:
        out: dict[str, list[ProductFile]] = {}
        for f in self.files:
            out.setdefault(f.dataset, []).append(f)
        return out

    def to_json(self) -> bytes:
        document = {
            "format": MANIFEST_FORMAT, "key": self.key, "attempt": self.attempt, "product": self.product,
            "lineage": self.lineage, "settings": self.settings, "files": [f.to_dict() for f in self.files],
            "rows": self.rows, "bytes": self.bytes,
            "writing_started": self.writing_started, "writing_ended": self.writing_ended,
        }
        return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            value = json.loads(data)
            if value.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {value.get('format')!r}")
            return cls(
                key=value["key"], attempt=value["attempt"], product=value["product"], lineage=value["lineage"],
                settings=value.get("settings", {}), files=tuple(ProductFile.from_dict(f) for f in value["files"]),
                writing_started=value["writing_started"], writing_ended=value["writing_ended"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"not a product manifest: {one_line(exc)}") from exc


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class AttemptWriter:
    """Puts an attempt's files under its prefix and writes the manifest last. It never
    writes outside `prefix` and never overwrites: each path is written once."""

    store: ObjectStore
    prefix: str
    key: str
    attempt: str
    product: str
    lineage: dict[str, Any]
    settings: dict[str, Any]
    files: list[ProductFile] = field(default_factory=list)
    started: str = field(default_factory=_now)

    def put_file(self, path: str, data: bytes, *, dataset: str, rows: int, schema: tuple[tuple[str, str], ...]) -> ProductFile:
        if any(f.path == path for f in self.files):
            raise ValueError(f"{path} written twice in one attempt")
        value = crc32c(data)
        self.store.put(join_key(self.prefix, path), data, size=len(data), crc32c=value)
        entry = ProductFile(path=path, dataset=dataset, size=len(data), crc32c=value, rows=rows, schema=schema)
        self.files.append(entry)
        return entry

    def finish(self) -> Manifest:
        manifest = Manifest(
            key=self.key, attempt=self.attempt, product=self.product, lineage=self.lineage, settings=self.settings,
            files=tuple(self.files), writing_started=self.started, writing_ended=_now(),
        )
        data = manifest.to_json()
        self.store.put(join_key(self.prefix, MANIFEST), data, size=len(data), crc32c=crc32c(data))
        return manifest


def read_manifest(store: ObjectStore, prefix: str) -> Manifest:
    """The attempt's manifest; ObjectNotFound when it was never written (incomplete)."""
    key = join_key(prefix, MANIFEST)
    meta = store.head(key)
    return Manifest.from_json(store.get_range(key, 0, meta.size))


def check_attempt(store: ObjectStore, prefix: str, *, key: str, deep: bool = False) -> list[str]:
    """What is wrong with an attempt's files (empty: nothing): no manifest, a manifest of
    another key, a file missing or of another size (and with `deep`, another CRC32C)."""
    try:
        manifest = read_manifest(store, prefix)
    except ObjectNotFound:
        return ["no manifest: writing never ended"]
    except FerryError as exc:
        return [f"manifest unreadable: {one_line(exc)}"]
    if manifest.key != key:
        return [f"manifest names key {manifest.key[:12]}, not {key[:12]}"]
    problems = []
    for f in manifest.files:
        try:
            meta = store.head(join_key(prefix, f.path))
        except ObjectNotFound:
            problems.append(f"{f.path}: missing")
            continue
        if meta.size != f.size:
            problems.append(f"{f.path}: {meta.size} bytes, manifest says {f.size}")
        elif deep and crc32c(store.get_range(join_key(prefix, f.path), 0, f.size, if_match=meta.etag)) != f.crc32c:
            problems.append(f"{f.path}: CRC32C differs from the manifest")
    return problems


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    """Delete every object under `prefix/` (an attempt's files); returns how many."""
    count = 0
    for meta in list(store.list(prefix.rstrip("/") + "/")):
        store.delete(meta.key)
        count += 1
    return count


__all__ = [
    "MANIFEST",
    "AttemptWriter",
    "Manifest",
    "ProductFile",
    "check_attempt",
    "delete_prefix",
    "read_manifest",
]
