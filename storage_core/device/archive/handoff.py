"""Hand closed archives to the gateway exactly once, tracked in a local SQLite ledger.

    reconcile ledger with the folder ─> per closed archive, oldest first:
      staged (a hard link in .handoff/NAME/RECORDING/NAME) ─> device_upload (resumable:
      its state file keeps the transaction id) ─> 'stored' committed ─> deleted, or moved
      under uploaded/ ─> 'removed' committed ─> retention

An archive leaves the folder only after the gateway's own account says its transaction
completed with the file stored (or skipped: identical bytes already stored). A kill at
any point leaves a row the next run resumes: 'pending' uploads again under the same
transaction (parts already stored are not sent again), 'stored' finishes the removal.
The ledger is stdlib sqlite3 (a device loads no SQLAlchemy).

Retention (`keep_bytes`, `keep_archives`) counts the archives in the folder and under
uploaded/; it deletes the oldest uploaded ones first and never an archive not yet
uploaded: when those alone exceed the budget, the report says `back_pressure` (and a
writer given the same budget waits or refuses records, see retention.py).

`on_uploaded(UploadedArchive)` is called for each archive once the gateway stored it and
the ledger says so, on a thread of its own: one that raises is logged and changes nothing
else; the hand-off waits for the callbacks before it returns.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from storage_core.device.archive.format import ARCHIVE_SUFFIX
from storage_core.device.archive.reader import archive_identity
from storage_core.device.archive.retention import Budget, not_uploaded
from storage_core.diskio import fsync_dir

log = logging.getLogger(__name__)

LEDGER = ".ferry-archive-ledger.sqlite"
STAGING = ".handoff"
UPLOADED = "uploaded"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS archives (
    name TEXT PRIMARY KEY,
    sequence INTEGER,
    size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'stored', 'removed', 'missing')),
    transaction_id TEXT,
    updated_ns INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class HandOffReport:
    uploaded: list[str] = field(default_factory=list)  # stored by this run
    removed: list[str] = field(default_factory=list)  # deleted or moved under uploaded/ by this run
    pending: list[str] = field(default_factory=list)  # closed, not yet stored
    missing: list[str] = field(default_factory=list)  # gone from the folder before they were stored
    dropped: list[str] = field(default_factory=list)  # uploaded archives deleted by retention
    back_pressure: bool = False  # archives not yet uploaded alone exceed the retention budget


@dataclass(frozen=True)
class UploadedArchive:
    """An archive the gateway stored (what `on_uploaded` gets): `path` is where it was."""

    path: Path
    sequence: int | None
    bytes: int
    transaction_id: str | None


def _isolated(callback: Callable[[UploadedArchive], object], archive: UploadedArchive) -> None:
    try:
        callback(archive)
    except Exception:  # noqa: BLE001 - a callback's failure is its own, never the hand-off's
        log.exception("on_uploaded callback %s failed for %s", getattr(callback, "__name__", callback), archive.path)


class Ledger:
    """The folder's record of each closed archive's hand-off state."""

    def __init__(self, folder: Path) -> None:
        self.db = sqlite3.connect(folder / LEDGER, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed 'stored' survives a power loss
        self.db.execute(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def rows(self) -> dict[str, tuple[int | None, int, str]]:
        return {name: (seq, size, state) for name, seq, size, state in self.db.execute("SELECT name, sequence, size, state FROM archives")}

    def add(self, name: str, sequence: int | None, size: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO archives VALUES (?, ?, ?, 'pending', NULL, ?)", (name, sequence, size, time.time_ns()))

    def set(self, name: str, state: str, transaction_id: str | None = None) -> None:
        self.db.execute(
            "UPDATE archives SET state = ?, transaction_id = COALESCE(?, transaction_id), updated_ns = ? WHERE name = ?",
            (state, transaction_id, time.time_ns(), name),
        )


def _closed_archives(folder: Path) -> list[Path]:
    return [p for p in folder.glob(f"*{ARCHIVE_SUFFIX}") if p.is_file()]


def _remove(folder: Path, path: Path, keep: bool) -> None:
    if keep:
        target = folder / UPLOADED
        target.mkdir(exist_ok=True)
        os.replace(path, target / path.name)
        fsync_dir(target)
    else:
        path.unlink(missing_ok=True)
    fsync_dir(folder)


def hand_off(
    folder: str | os.PathLike[str],
    *,
    gateway: str,
    token: str,
    device: str | None = None,
    recording: str | None = None,
    keep_uploaded: bool = False,
    keep_bytes: int | None = None,
    keep_archives: int | None = None,
    upload: Callable[..., object] | None = None,
    on_uploaded: Callable[[UploadedArchive], object] | None = None,
) -> HandOffReport:
    """Upload every closed archive of `folder` not yet stored, oldest first, each as its own
    gateway transaction at DEVICE/RECORDING/NAME (RECORDING: the folder's name by default);
    then delete it, or move it under uploaded/ (`keep_uploaded`). See the module docstring
    for what a kill at any point leaves. `upload` is storage_core.device.client.device_upload
    unless a test injects faults. Raises what the upload raises (rows stay 'pending')."""
    if upload is None:
        from storage_core.device.client import device_upload as upload
    root = Path(folder)
    recording = recording or root.resolve().name
    ledger = Ledger(root)
    report = HandOffReport()
    callbacks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-handoff-callbacks") if on_uploaded else None
    try:
        rows = ledger.rows()
        present = {p.name: p for p in _closed_archives(root)}
        for name, path in present.items():
            if name not in rows:
                identity = archive_identity(path)
                ledger.add(name, identity[0] if identity else None, path.stat().st_size)
        for name, (_, _, state) in rows.items():
            if state == "pending" and name not in present:
                ledger.set(name, "missing")
                report.missing.append(name)
        rows = ledger.rows()
        order = sorted((seq if seq is not None else 2**63, name) for name, (seq, _, state) in rows.items() if state in ("pending", "stored"))
        for _, name in order:
            state = rows[name][2]
            path = present.get(name)
            if state == "pending" and path is not None:
                stage = root / STAGING / name
                staged = stage / recording / name
                staged.parent.mkdir(parents=True, exist_ok=True)
                if not staged.exists():
                    os.link(path, staged)
                done = upload(stage, gateway=gateway, token=token, device=device)
                transaction_id = getattr(done, "transaction_id", None)
                ledger.set(name, "stored", transaction_id)
                report.uploaded.append(name)
                if callbacks is not None:
                    uploaded = UploadedArchive(path, rows[name][0], rows[name][1], transaction_id)
                    callbacks.submit(_isolated, on_uploaded, uploaded)
                state = "stored"
                shutil.rmtree(stage, ignore_errors=True)
            if state == "stored":
                if path is not None:
                    _remove(root, path, keep_uploaded)
                ledger.set(name, "removed")
                report.removed.append(name)
        shutil.rmtree(root / STAGING, ignore_errors=True)
        report.pending.extend(sorted(n for n, (_, _, s) in ledger.rows().items() if s == "pending"))
        if keep_bytes is not None or keep_archives is not None:
            dropped, pressure = _retain(root, keep_bytes, keep_archives)
            report.dropped.extend(dropped)
            return HandOffReport(report.uploaded, report.removed, report.pending, report.missing, report.dropped, pressure)
        return report
    finally:
        if callbacks is not None:
            callbacks.shutdown(wait=True)
        ledger.close()


def _retain(root: Path, keep_bytes: int | None, keep_archives: int | None) -> tuple[list[str], bool]:
    """Delete the oldest uploaded archives (under uploaded/) until the folder fits the budget;
    back-pressure when the archives not yet uploaded alone do not fit."""
    budget = Budget(keep_bytes, keep_archives)
    waiting = not_uploaded(root)
    uploaded_dir = root / UPLOADED
    uploaded = sorted(_closed_archives(uploaded_dir), key=lambda p: (archive_identity(p) or (2**63, 0))[0]) if uploaded_dir.is_dir() else []
    dropped = []
    while uploaded and budget.exceeded(waiting + uploaded):
        oldest = uploaded.pop(0)
        oldest.unlink()
        dropped.append(oldest.name)
    if dropped:
        fsync_dir(uploaded_dir)
    return dropped, budget.exceeded(waiting)


__all__ = ["LEDGER", "UPLOADED", "HandOffReport", "Ledger", "UploadedArchive", "hand_off"]
