"""Download tasks: plan a restore, then restore recordings in coarse batches.

They pass query filters and recording names, never bytes or store handles: each task
asks the catalog again, so a retried task works from the catalog's current state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from storage_core import retrieve
from storage_core.catalog import open_default_catalog
from storage_core.catalog.queries import RecordingResult
from storage_core.download.plan import Layout
from tasks.retry import RETRY_POLICY


class Selection(BaseModel):
    """What to restore: the query filters of the download flow."""

    device_id: str | None = None
    recording: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    modality: str | None = None
    topic: str | None = None
    limit: int | None = None


class RecordingRef(BaseModel):
    device_id: str
    recording: str
    files: int
    bytes: int


class RestorePlan(BaseModel):
    recordings: list[RecordingRef]
    files: int
    bytes: int
    files_present: int  # already at their destination, identical (resume)
    bytes_present: int


class BatchResult(BaseModel):
    files: int
    bytes_fetched: int


def _query(selection: Selection, only: list[RecordingRef] | None = None) -> list[RecordingResult]:
    """The selection's recordings; with `only`, just those of one batch (its objects alone are loaded)."""
    among = None if only is None else [(r.device_id, r.recording) for r in only]
    return retrieve.query(catalog=open_default_catalog(), among=among, **selection.model_dump())


@task(name="plan-restore")
def plan_restore(selection: Selection, dest: str, *, layout: Layout, overwrite: bool, resume: bool) -> RestorePlan:
    """Query the catalog and check every destination before anything is written
    (WritePlanError lists every problem; it is not retried)."""
    found = _query(selection)
    writes = retrieve.plan_download(found, dest, layout=layout, overwrite=overwrite, resume=resume)
    present = [w for w in writes if w.present]
    return RestorePlan(
        recordings=[RecordingRef(device_id=r.device_id, recording=r.recording, files=r.files, bytes=r.bytes) for r in found],
        files=len(writes),
        bytes=sum(r.bytes for r in found),
        files_present=len(present),
        bytes_present=sum(w.source.size or 0 for w in present),
    )


@task(name="restore-recordings", cache_policy=NO_CACHE, **RETRY_POLICY)  # on_bytes is a live callback
def restore_recordings(
    selection: Selection,
    recordings: list[RecordingRef],
    dest: str,
    *,
    layout: Layout,
    overwrite: bool,
    on_bytes: Callable[[int], None] | None = None,
) -> BatchResult:
    """Download a batch of recordings. Always resumes: a retry keeps the files an earlier
    attempt completed and verified (the plan already refused anything else in the way)."""
    found = _query(selection, recordings)
    moved = 0

    def progress(n: int) -> None:
        nonlocal moved
        moved += n
        if on_bytes is not None:
            on_bytes(n)

    paths = retrieve.download(found, dest, layout=layout, overwrite=overwrite, resume=not overwrite, on_progress=progress)
    return BatchResult(files=len(paths), bytes_fetched=moved)


class ByteCounter:
    """Bytes moved by concurrent tasks, reported at most every `interval` seconds."""

    def __init__(self, report: Callable[[int], None], *, interval: float = 1.0) -> None:
        self._report = report
        self._interval = interval
        self._lock = threading.Lock()
        self._last = 0.0
        self.total = 0

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.total += nbytes
            now = time.monotonic()
            if now - self._last < self._interval:
                return
            self._last = now
            total = self.total
        self._report(total)


def batch_recordings(recordings: list[RecordingRef], *, target_bytes: int = 4 << 30) -> list[list[RecordingRef]]:
    """Consecutive recordings grouped to about `target_bytes` per task (one task per huge
    recording), so a fleet-wide restore is tens of tasks, not thousands."""
    batches: list[list[RecordingRef]] = []
    size = 0
    for recording in recordings:
        if not batches or size + recording.bytes > target_bytes:
            batches.append([])
            size = 0
        batches[-1].append(recording)
        size += recording.bytes
    return batches


__all__ = [
    "BatchResult",
    "ByteCounter",
    "RecordingRef",
    "RestorePlan",
    "Selection",
    "batch_recordings",
    "plan_restore",
    "restore_recordings",
]
