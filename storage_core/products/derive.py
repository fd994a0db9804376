"""Plan a derive (which recordings to compute, reuse, or recompute because broken, and
why), then compute one recording's product through an attempt and publish it.

    plan:    recording + product code + options → lineage → key → compute | reuse | broken | busy
    compute: claim (lease) → chunked files under the attempt prefix → manifest → compare-and-set

Modes: `reuse` (default) keeps a committed product; `if_broken` also checks its files
against its manifest and recomputes it when they disagree; `force` always writes a new
attempt, and the committed one stays readable until the new one commits (then gc's).
Two derives of one key never both compute it: the second waits for the first's commit
(or for its lease to run out, and then takes over).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from storage_core.catalog import products as catalog_products
from storage_core.catalog.db import Catalog
from storage_core.catalog.products import InputObject, ProductInfo, RecordingInputs
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import ConfigError, ObjectNotFound, ProductBusy, one_line
from storage_core.keys import join_key
from storage_core.products.lineage import ProductDefinition, canonical_json, change_reason, lineage, lineage_key
from storage_core.products.publish import AttemptWriter, check_attempt, delete_prefix
from storage_core.products.topics import TOPICS, write_topics
from storage_core.stores.base import ObjectStore
from storage_core.stores.registry import open_store

log = logging.getLogger(__name__)

PRODUCTS: dict[str, ProductDefinition] = {TOPICS.name: TOPICS}
MODES = ("reuse", "if_broken", "force")
Mode = Literal["reuse", "if_broken", "force"]
Action = Literal["compute", "reuse", "broken", "busy"]
DEFAULT_LEASE = timedelta(minutes=2)
POLL_SECONDS = 0.2


def product_definition(name: str) -> ProductDefinition:
    try:
        return PRODUCTS[name]
    except KeyError:
        raise ConfigError(f"unknown product {name!r} (known: {', '.join(sorted(PRODUCTS))})") from None


@dataclass(frozen=True)
class PlannedProduct:
    """One recording's product in a plan. `action`: compute (reason new, code, option,
    input or force), reuse, broken (recomputed; reason says what is wrong), busy (another
    live attempt computes it: this run waits for it)."""

    product: str
    device_id: str
    recording: str
    recording_id: int
    key: str
    action: Action
    reason: str
    lineage: dict[str, Any] = field(repr=False)
    inputs: tuple[InputObject, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"product": self.product, "device_id": self.device_id, "recording": self.recording,
                "key": self.key, "action": self.action, "reason": self.reason}


def _input_lineage(inputs: tuple[InputObject, ...]) -> list[dict[str, Any]]:
    return [{"uri": i.uri, "size": i.size, "crc32c": i.crc32c} for i in inputs]


def _broken_reason(info: ProductInfo) -> str | None:
    """Why the key has no usable data although something was attempted (None: never tried)."""
    latest = info.attempts[0] if info.attempts else None
    if latest is None:
        return None
    if latest.lease_expired():
        return "broken: its writer stopped (lease expired)"
    if latest.state == "failed":
        return f"broken: last attempt failed ({latest.error or 'no reason recorded'})"
    return None


def plan_one(catalog: Catalog, definition: ProductDefinition, rec: RecordingInputs, tracked: Mapping[str, Any],
             *, mode: Mode, settings: FerrySettings | None = None) -> PlannedProduct:
    document = lineage(definition, tracked, _input_lineage(rec.inputs))
    key = lineage_key(document)
    info = catalog_products.find_product(catalog, key)

    def planned(action: Action, reason: str) -> PlannedProduct:
        return PlannedProduct(definition.name, rec.device_id, rec.recording, rec.recording_id, key, action, reason,
                              document, rec.inputs)

    committed = info.committed if info else None
    if committed is not None:
        if mode == "force":
            return planned("compute", "force")
        if mode == "if_broken":
            store, _ = open_store(committed.store_uri, settings)
            problems = check_attempt(store, committed.prefix, key=key)
            if problems:
                return planned("broken", "broken: " + "; ".join(problems[:3]))
        return planned("reuse", "committed")
    if info is not None:
        running = info.running
        if running is not None and not running.lease_expired():
            return planned("busy", f"being computed by {running.owner or 'another run'}")
        broken = _broken_reason(info)
        if broken:
            return planned("broken", broken)
    previous = catalog_products.previous_product(catalog, definition.name, rec.recording_id, other_than=key)
    return planned("compute", change_reason(previous.lineage if previous else None, document))


def plan_derive(
    catalog: Catalog,
    product: str,
    *,
    device_id: str | None = None,
    recording: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    options: Mapping[str, Any] | None = None,
    mode: Mode = "reuse",
    settings: FerrySettings | None = None,
) -> list[PlannedProduct]:
    """One entry per matching recording (those with objects the product reads). Pure
    reading: nothing is claimed or written."""
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    definition = product_definition(product)
    resolved = definition.resolve(options)
    recordings = catalog_products.select_recordings(
        catalog, modality=definition.input_modality, device_id=device_id, recording=recording, since=since, until=until
    )
    return [plan_one(catalog, definition, rec, resolved.tracked, mode=mode, settings=settings) for rec in recordings]


@dataclass(frozen=True)
class DeriveOutcome:
    key: str
    device_id: str
    recording: str
    outcome: Literal["computed", "reused"]
    reason: str
    attempt: str | None
    files: int = 0
    rows: int = 0
    bytes: int = 0
    input_bytes: int = 0
    seconds: float = 0.0


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _products_root(settings: FerrySettings) -> tuple[ObjectStore, str, str]:
    """The store products are written to (FERRY_STORE), its root URI, and the key prefix."""
    store, prefix = open_store(settings.store_uri, settings)
    return store, store.uri, join_key(prefix, "products")


class _Lease:
    """Renews an attempt's lease when a third of it has passed (called after each file)."""

    def __init__(self, catalog: Catalog, attempt_id: str, lease: timedelta) -> None:
        self.catalog, self.attempt_id, self.lease = catalog, attempt_id, lease
        self.renewed = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.renewed >= self.lease.total_seconds() / 3:
            catalog_products.renew_lease(self.catalog, self.attempt_id, self.lease)
            self.renewed = time.monotonic()


def start_attempt(
    catalog: Catalog, definition: ProductDefinition, *, key: str, recording_id: int | None, document: dict[str, Any],
    settings: FerrySettings, untracked: dict[str, Any], lease: timedelta, wait: float,
) -> tuple[ObjectStore, str, str, str | None] | None:
    """Claim an attempt at `key`: (store, store_uri, prefix, the committed attempt it replaces).
    When another live attempt holds the key, wait up to `wait` seconds for it: None when it
    committed meanwhile (nothing to do); ProductBusy when it is still going."""
    store, store_uri, root = _products_root(settings)
    deadline = time.monotonic() + wait
    while True:
        attempt_id = uuid.uuid4().hex
        prefix = join_key(root, definition.name, key, attempt_id)
        try:
            replaces = catalog_products.claim_attempt(
                catalog, key=key, product=definition.name, recording_id=recording_id,
                lineage_json=canonical_json(document), attempt_id=attempt_id, store_uri=store_uri, prefix=prefix,
                lease=lease, owner=_owner(), settings=untracked,
            )
            return store, store_uri, prefix, replaces
        except ProductBusy:
            info = catalog_products.find_product(catalog, key)
            if info is not None and info.committed is not None and info.running is None:
                return None
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_SECONDS)
            info = catalog_products.find_product(catalog, key)
            if info is not None and info.committed is not None and info.running is None:
                return None


def derive_one(
    catalog: Catalog,
    item: PlannedProduct,
    *,
    options: Mapping[str, Any] | None = None,
    mode: Mode = "reuse",
    settings: FerrySettings | None = None,
    lease: timedelta = DEFAULT_LEASE,
    wait: float | None = None,
) -> DeriveOutcome:
    """Compute `item` unless it is already committed (mode reuse/if_broken: a concurrent
    run may have committed it since the plan), and publish it. On any failure the attempt
    is marked failed and its files deleted (best effort: gc removes what is left); the
    committed product, if any, is untouched."""
    settings = settings or load_settings()
    definition = product_definition(item.product)
    resolved = definition.resolve(options)
    started = time.monotonic()
    reused = DeriveOutcome(item.key, item.device_id, item.recording, "reused", item.reason, None)
    if item.action == "reuse":
        return reused
    claimed = start_attempt(
        catalog, definition, key=item.key, recording_id=item.recording_id, document=item.lineage, settings=settings,
        untracked=resolved.untracked, lease=lease, wait=lease.total_seconds() * 2 if wait is None else wait,
    )
    if claimed is None:
        return reused
    store, store_uri, prefix, replaces = claimed
    attempt_id = prefix.rsplit("/", 1)[-1]
    if replaces is not None and item.action in ("compute", "busy") and item.reason != "force" and mode != "force":
        catalog_products.forget_attempts(catalog, [attempt_id])  # committed by another run since the plan
        return reused
    writer = AttemptWriter(store, prefix, item.key, attempt_id, definition.name, item.lineage, resolved.untracked)
    try:
        sources = {i.store_uri: open_store(i.store_uri, settings)[0] for i in item.inputs}
        result = write_topics(
            item.inputs, lambda i: sources[i.store_uri].open_read(i.key), writer,
            decode=resolved.tracked["decode"], compression=resolved.untracked["compression"],
            chunk_rows=resolved.untracked["chunk_rows"], on_chunk=_Lease(catalog, attempt_id, lease),
        )
        manifest = writer.finish()
        catalog_products.commit_attempt(catalog, attempt_id, key=item.key, replaces=replaces,
                                        files=len(manifest.files), rows=manifest.rows, size=manifest.bytes)
    except BaseException as exc:
        abandon_attempt(catalog, store, attempt_id, prefix, one_line(exc) if isinstance(exc, Exception) else type(exc).__name__)
        raise
    return DeriveOutcome(item.key, item.device_id, item.recording, "computed", item.reason, attempt_id,
                         files=len(manifest.files), rows=manifest.rows, bytes=manifest.bytes,
                         input_bytes=result.input_bytes, seconds=round(time.monotonic() - started, 3))


def abandon_attempt(catalog: Catalog, store: ObjectStore, attempt_id: str, prefix: str, reason: str) -> None:
    """Mark an attempt failed and delete its files, each step best effort: a failure here
    must not hide the one that caused it (gc finishes the job)."""
    try:
        catalog_products.fail_attempt(catalog, attempt_id, reason)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not mark attempt %s failed (its lease will expire): %s", attempt_id, one_line(exc))
    try:
        delete_prefix(store, prefix)
    except (Exception, ObjectNotFound) as exc:  # noqa: BLE001
        log.warning("could not delete attempt %s's files (gc will): %s", attempt_id, one_line(exc))


__all__ = [
    "DEFAULT_LEASE",
    "MODES",
    "PRODUCTS",
    "DeriveOutcome",
    "PlannedProduct",
    "abandon_attempt",
    "derive_one",
    "plan_derive",
    "plan_one",
    "product_definition",
    "start_attempt",
]
