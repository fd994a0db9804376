"""An ingest split into recording groups, each its own upload transaction, so that workers
on several hosts can share it (storage_core.catalog.work items, one per group).

A group's transaction id is fixed when the job is planned, so whoever takes the group over
finds the transaction an earlier worker began: `begin_group` begins it only when it does
not exist yet, and otherwise hands it back as it is (open: resume it, its stored parts are
not sent again; completed: nothing to do). That is what stores every file exactly once
when a worker dies mid-group.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from storage_core.catalog import transactions as records
from storage_core.catalog.db import Catalog
from storage_core.catalog.views import TransactionInfo
from storage_core.config import FerrySettings
from storage_core.errors import CatalogConflict, ConfigError
from storage_core.keys import StorageUri
from storage_core.manifest import ManifestEntry
from storage_core.upload.transactions import prepare_manifest


@dataclass(frozen=True)
class RecordingGroup:
    """Some whole recordings of one ingest and the transaction that stores them."""

    transaction_id: str
    recordings: tuple[str, ...]  # "DEVICE/RECORDING"
    entries: tuple[ManifestEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"transaction_id": self.transaction_id, "recordings": list(self.recordings),
                "entries": [_entry_json(e) for e in self.entries]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> RecordingGroup:
        return cls(value["transaction_id"], tuple(value["recordings"]), tuple(_entry_of(e) for e in value["entries"]))


def _entry_json(entry: ManifestEntry) -> dict[str, Any]:
    return {"path": str(entry.path), "device_id": entry.device_id, "recording": entry.recording,
            "relative_path": entry.relative_path, "size": entry.size, "mtime_ns": entry.mtime_ns,
            "modality": entry.modality, "crc32c": entry.crc32c, "source_etag": entry.source_etag}


def _entry_of(value: dict[str, Any]) -> ManifestEntry:
    path = value["path"] if value["source_etag"] is not None else Path(value["path"])  # an object's URI stays a str
    return ManifestEntry(path=path, **{k: v for k, v in value.items() if k != "path"})


def plan_groups(entries: Iterable[ManifestEntry], *, group_size: int = 1) -> list[RecordingGroup]:
    """Split a scan's entries into groups of `group_size` whole recordings (by device and
    recording name, in that order), each with a new transaction id. Pure."""
    if group_size < 1:
        raise ConfigError(f"group size must be at least 1 recording, not {group_size}")
    by_recording = [(f"{device}/{name}", list(files)) for (device, name), files
                    in groupby(sorted(entries, key=lambda e: (e.device_id, e.recording, e.relative_path)),
                               key=lambda e: (e.device_id, e.recording))]
    groups = []
    for start in range(0, len(by_recording), group_size):
        chunk = by_recording[start:start + group_size]
        groups.append(RecordingGroup(uuid.uuid4().hex, tuple(name for name, _ in chunk),
                                     tuple(e for _, files in chunk for e in files)))
    return groups


def begin_group(
    catalog: Catalog,
    group: RecordingGroup,
    destination: StorageUri,
    *,
    origination: str,
    device_id: str | None,
    flow_run_id: str | None,
    settings: FerrySettings | None = None,
) -> TransactionInfo:
    """The group's transaction: begun now (dedup candidates checksummed, destinations
    claimed) when no worker began it before, else as an earlier worker left it (open,
    completed or aborted: the caller decides). CatalogConflict (retryable) when another
    caller is beginning it at this very moment."""
    found = records.find_transaction(catalog, group.transaction_id)
    if found is not None:
        return found
    entries = prepare_manifest(catalog, list(group.entries), destination, settings=settings)
    try:
        return records.begin_transaction(catalog, entries, destination=destination, origination=origination,
                                         device_id=device_id, flow_run_id=flow_run_id,
                                         transaction_id=group.transaction_id)
    except CatalogConflict as exc:
        raise CatalogConflict(str(exc), retryable=True) from exc


__all__ = ["RecordingGroup", "begin_group", "plan_groups"]
