"""Reconcile tasks: find stale transactions, abort orphaned multipart uploads."""

from __future__ import annotations

from datetime import timedelta

from prefect import task

from storage_core.catalog import TransactionInfo, open_default_catalog
from storage_core.catalog.transactions import stale_transactions
from storage_core.config import load_settings
from storage_core.upload import reconcile
from tasks.retry import RETRY_POLICY


@task(name="find-stale-transactions")
def find_stale(older_than_minutes: float) -> list[TransactionInfo]:
    return stale_transactions(open_default_catalog(), older_than=timedelta(minutes=older_than_minutes))


@task(name="abort-orphaned-uploads", **RETRY_POLICY)
def abort_orphans(older_than_minutes: float) -> reconcile.OrphanReport:
    settings = load_settings()
    return reconcile.abort_orphaned_uploads(
        open_default_catalog(settings), settings, older_than=timedelta(minutes=older_than_minutes)
    )


__all__ = ["abort_orphans", "find_stale"]
