"""Summarize tasks: choose objects, summarize them in batches. They pass ids, never bytes."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel, Field

from storage_core.catalog import open_default_catalog, summaries
from storage_core.config import load_settings
from storage_core.errors import one_line
from storage_core.formats.summarize import summarize_object
from storage_core.stores.registry import open_store
from tasks.retry import RETRY_POLICY


class SummaryBatch(BaseModel):
    summarized: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    bytes_fetched: int = 0
    failures: list[str] = Field(default_factory=list)  # "uri: reason", one line each


@task(name="select-objects-to-summarize")
def select_objects(
    *,
    device_id: str | None,
    since: datetime | None,
    until: datetime | None,
    transaction_id: str | None,
    only_missing: bool,
) -> list[int]:
    """Ids of the MCAP/Parquet objects matching the filters (see `select_for_summary`)."""
    targets = summaries.select_for_summary(
        open_default_catalog(),
        device_id=device_id,
        since=since,
        until=until,
        transaction_id=transaction_id,
        only_missing=only_missing,
    )
    return [t.id for t in targets]


@task(name="summarize-objects", **RETRY_POLICY)
def summarize_objects(object_ids: list[int], *, fresh_since: datetime | None = None) -> SummaryBatch:
    """Summarize a batch of objects and record each outcome as it comes.

    An object that does not need a summary any more (summarized by an earlier attempt of
    this task, or by another run; with `fresh_since`, summarized since then) is skipped,
    so a retry redoes only what is left. An error a retry cannot fix (not MCAP, bad
    footer, object gone) is recorded as the object's `summary_error` and the batch goes
    on; a retryable one (server unavailable) fails the task, which Prefect retries.
    """
    settings = load_settings()
    catalog = open_default_catalog(settings)
    batch = SummaryBatch()
    targets = summaries.get_targets(catalog, object_ids)
    batch.skipped += len(object_ids) - len(targets)  # deleted from the catalog meanwhile
    for target in targets:
        if not target.needs_summary(fresh_since=fresh_since):
            batch.skipped += 1
            continue
        try:
            store, _ = open_store(target.store_uri, settings)
            result = summarize_object(store, target.key, target.modality, uri=target.uri)
        except Exception as exc:  # noqa: BLE001 - any bad file is recorded, never fatal to the batch
            if getattr(exc, "retryable", False):
                raise
            reason = one_line(exc)
            summaries.record_summary_failure(catalog, target.id, reason)
            batch.failed += 1
            batch.failures.append(f"{target.uri}: {reason}")
            continue
        summaries.record_summary(catalog, target.id, result.summary)
        batch.summarized += 1
        batch.requests += result.requests
        batch.bytes_fetched += result.bytes_fetched
    return batch


@task(name="record-summary-failures")
def record_failures(object_ids: list[int], reason: str, *, fresh_since: datetime | None = None) -> SummaryBatch:
    """After a batch failed for good: objects it left without a summary get `reason` as
    their `summary_error`; those an earlier attempt finished count as summarized."""
    catalog = open_default_catalog()
    batch = SummaryBatch()
    for target in summaries.get_targets(catalog, object_ids):
        if target.needs_summary(fresh_since=fresh_since):
            summaries.record_summary_failure(catalog, target.id, reason)
            batch.failed += 1
            batch.failures.append(f"{target.uri}: {reason}")
        else:
            batch.summarized += 1
    return batch


__all__ = ["SummaryBatch", "record_failures", "select_objects", "summarize_objects"]
