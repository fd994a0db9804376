"""Derived products in the catalog: which recordings feed a product, and the life of each
attempt at writing one (claim with a lease, renew, commit by compare-and-set, fail).

The publish is one statement pair in one transaction: the attempt goes running → committed
only while its lease is live, and the product's `committed_attempt_id` moves only from the
value the writer saw when it claimed. Files are never renamed or rewritten: a committed
attempt's prefix is immutable; a later attempt of the same key (force, rechunk) has its own
prefix, and the one it replaces becomes `superseded`, still readable until gc.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy.exc
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import AttemptState, Product, ProductAttempt, Recording, StoredObject, utcnow
from storage_core.catalog.views import as_utc
from storage_core.errors import AttemptLost, ConfigError, ProductBusy, ProductNotFound

MIN_KEY_PREFIX = 6


@dataclass(frozen=True)
class InputObject:
    """A stored object a product reads: its identity in the lineage is (uri, size, crc32c)."""

    store_uri: str
    key: str
    size: int
    crc32c: int

    @property
    def uri(self) -> str:
        return f"{self.store_uri}/{self.key}"


@dataclass(frozen=True)
class RecordingInputs:
    recording_id: int
    device_id: str
    recording: str
    inputs: tuple[InputObject, ...]


@dataclass(frozen=True)
class AttemptInfo:
    id: str
    product_key: str
    store_uri: str
    prefix: str
    state: str
    owner: str | None
    settings: dict[str, Any]
    lease_expires_at: datetime
    started_at: datetime
    ended_at: datetime | None
    error: str | None
    files: int | None
    rows: int | None
    bytes: int | None

    @classmethod
    def of(cls, row: ProductAttempt) -> AttemptInfo:
        return cls(
            id=row.id, product_key=row.product_key, store_uri=row.store_uri, prefix=row.prefix, state=row.state,
            owner=row.owner, settings=json.loads(row.settings or "{}"), lease_expires_at=as_utc(row.lease_expires_at),
            started_at=as_utc(row.started_at), ended_at=as_utc(row.ended_at), error=row.error, files=row.files,
            rows=row.rows, bytes=row.bytes,
        )

    def lease_expired(self, now: datetime | None = None) -> bool:
        return self.state == AttemptState.RUNNING.value and self.lease_expires_at <= (now or utcnow())


@dataclass(frozen=True)
class ProductInfo:
    key: str
    product: str
    device_id: str | None
    recording: str | None
    recording_id: int | None
    lineage: dict[str, Any]
    committed_attempt_id: str | None
    created_at: datetime
    committed_at: datetime | None
    attempts: tuple[AttemptInfo, ...] = field(default=())  # newest first

    @property
    def committed(self) -> AttemptInfo | None:
        return next((a for a in self.attempts if a.id == self.committed_attempt_id), None)

    @property
    def running(self) -> AttemptInfo | None:
        return next((a for a in self.attempts if a.state == AttemptState.RUNNING.value), None)


def _product_info(session: Session, row: Product) -> ProductInfo:
    recording = session.get(Recording, row.recording_id) if row.recording_id is not None else None
    attempts = session.scalars(
        select(ProductAttempt).where(ProductAttempt.product_key == row.key).order_by(ProductAttempt.started_at.desc())
    )
    return ProductInfo(
        key=row.key, product=row.product, device_id=recording.device_id if recording else None,
        recording=recording.name if recording else None, recording_id=row.recording_id,
        lineage=json.loads(row.lineage), committed_attempt_id=row.committed_attempt_id,
        created_at=as_utc(row.created_at), committed_at=as_utc(row.committed_at),
        attempts=tuple(AttemptInfo.of(a) for a in attempts),
    )


def select_recordings(
    catalog: Catalog,
    *,
    modality: str,
    device_id: str | None = None,
    recording: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[RecordingInputs]:
    """Recordings with at least one non-empty object of `modality`, each with those objects
    sorted by path. The window [since, until) is matched as summarize matches it: the
    recording's time when known, else when the object was stored."""
    query = (
        select(Recording, StoredObject)
        .join(StoredObject, StoredObject.recording_id == Recording.id)
        .where(StoredObject.modality == modality, StoredObject.size > 0)
        .order_by(Recording.device_id, Recording.name, StoredObject.relative_path, StoredObject.store_uri)
    )
    if device_id:
        query = query.where(Recording.device_id == device_id)
    if recording:
        query = query.where(Recording.name == recording)
    if since is not None:
        query = query.where(func.coalesce(Recording.ended_at, StoredObject.stored_at) >= as_utc(since))
    if until is not None:
        query = query.where(func.coalesce(Recording.started_at, StoredObject.stored_at) < as_utc(until))
    found: dict[int, tuple[Recording, list[InputObject]]] = {}
    with catalog.session() as session:
        for rec, obj in session.execute(query):
            found.setdefault(rec.id, (rec, []))[1].append(InputObject(obj.store_uri, obj.key, obj.size, obj.crc32c))
    return [RecordingInputs(rec.id, rec.device_id, rec.name, tuple(objs)) for rec, objs in found.values()]


def current_inputs(catalog: Catalog) -> set[tuple[str, int, int]]:
    """(uri, size, crc32c) of every stored object: what a product's inputs must still be for
    a recording to reach it."""
    with catalog.session() as session:
        rows = session.execute(select(StoredObject.store_uri, StoredObject.key, StoredObject.size, StoredObject.crc32c))
        return {(f"{s}/{k}", size, crc) for s, k, size, crc in rows}


def get_product(catalog: Catalog, key: str) -> ProductInfo:
    """The product under `key`, or under the one key that starts with it (at least
    MIN_KEY_PREFIX hex digits: the short form `ferry` prints)."""
    key = key.strip().lower()
    if len(key) < MIN_KEY_PREFIX:
        raise ConfigError(f"product key {key!r}: give at least {MIN_KEY_PREFIX} hex digits")
    with catalog.session() as session:
        row = session.get(Product, key)
        if row is None:
            matches = session.scalars(select(Product).where(Product.key.startswith(key, autoescape=True)).limit(2)).all()
            if len(matches) > 1:
                raise ConfigError(f"product key prefix {key!r} is ambiguous: give more digits")
            row = matches[0] if matches else None
        if row is None:
            raise ProductNotFound(f"no product with key {key}")
        return _product_info(session, row)


def find_product(catalog: Catalog, key: str) -> ProductInfo | None:
    with catalog.session() as session:
        row = session.get(Product, key)
        return _product_info(session, row) if row is not None else None


def list_products(
    catalog: Catalog, *, product: str | None = None, device_id: str | None = None, recording: str | None = None,
) -> list[ProductInfo]:
    query = select(Product).outerjoin(Recording, Product.recording_id == Recording.id).order_by(
        Recording.device_id, Recording.name, Product.product, Product.created_at
    )
    if product:
        query = query.where(Product.product == product)
    if device_id:
        query = query.where(Recording.device_id == device_id)
    if recording:
        query = query.where(Recording.name == recording)
    with catalog.session() as session:
        return [_product_info(session, row) for row in session.scalars(query)]


def previous_product(catalog: Catalog, product: str, recording_id: int, *, other_than: str) -> ProductInfo | None:
    """The newest committed product of the same kind for the same recording under another
    key: what a new key is compared with to say why it must be computed."""
    with catalog.session() as session:
        row = session.scalars(
            select(Product)
            .where(
                Product.product == product, Product.recording_id == recording_id, Product.key != other_than,
                Product.committed_attempt_id.is_not(None),
            )
            .order_by(Product.committed_at.desc())
            .limit(1)
        ).first()
        return _product_info(session, row) if row is not None else None


def claim_attempt(
    catalog: Catalog,
    *,
    key: str,
    product: str,
    recording_id: int | None,
    lineage_json: str,
    attempt_id: str,
    store_uri: str,
    prefix: str,
    lease: timedelta,
    owner: str,
    settings: dict[str, Any],
) -> str | None:
    """Start an attempt at `key` (creating the product row on first sight) and return the
    committed attempt id it will replace (None: nothing committed yet). A running attempt
    past its lease is marked failed first; one with a live lease makes this raise
    ProductBusy: that writer computes the key, this one does not."""
    now = utcnow()
    with catalog.session() as session:
        if session.get(Product, key) is None:
            try:
                with session.begin_nested():
                    session.add(Product(key=key, product=product, recording_id=recording_id, lineage=lineage_json))
            except sqlalchemy.exc.IntegrityError:
                pass  # a concurrent claimer created it: fine, the lineage is the same by construction
        session.execute(
            update(ProductAttempt)
            .where(
                ProductAttempt.product_key == key, ProductAttempt.state == AttemptState.RUNNING.value,
                ProductAttempt.lease_expires_at <= now,
            )
            .values(state=AttemptState.FAILED.value, ended_at=now, error="lease expired: its writer stopped")
        )
        try:
            with session.begin_nested():
                session.add(ProductAttempt(
                    id=attempt_id, product_key=key, store_uri=store_uri, prefix=prefix,
                    state=AttemptState.RUNNING.value, owner=owner, settings=json.dumps(settings, sort_keys=True),
                    lease_expires_at=now + lease, started_at=now,
                ))
        except sqlalchemy.exc.IntegrityError:
            running = session.scalars(select(ProductAttempt).where(
                ProductAttempt.product_key == key, ProductAttempt.state == AttemptState.RUNNING.value)).first()
            who = f" by {running.owner}" if running is not None and running.owner else ""
            raise ProductBusy(f"product {key[:12]} is being computed{who}") from None
        return session.get(Product, key).committed_attempt_id


def renew_lease(catalog: Catalog, attempt_id: str, lease: timedelta) -> None:
    """Extend a running attempt's lease; AttemptLost when it is no longer running (its
    lease ran out and another claimer failed it)."""
    now = utcnow()
    with catalog.session() as session:
        done = session.execute(
            update(ProductAttempt)
            .where(ProductAttempt.id == attempt_id, ProductAttempt.state == AttemptState.RUNNING.value,
                   ProductAttempt.lease_expires_at > now)
            .values(lease_expires_at=now + lease)
        ).rowcount
    if done != 1:
        raise AttemptLost(f"attempt {attempt_id} lost its lease")


def commit_attempt(
    catalog: Catalog, attempt_id: str, *, key: str, replaces: str | None, files: int, rows: int, size: int,
) -> None:
    """Publish: in one transaction the attempt becomes committed (only while its lease is
    live) and the product points at it (only if it still points at `replaces`), and the
    replaced attempt becomes superseded. Either all of it happens or AttemptLost."""
    now = utcnow()
    with catalog.session() as session:
        mine = session.execute(
            update(ProductAttempt)
            .where(ProductAttempt.id == attempt_id, ProductAttempt.state == AttemptState.RUNNING.value,
                   ProductAttempt.lease_expires_at > now)
            .values(state=AttemptState.COMMITTED.value, ended_at=now, files=files, rows=rows, bytes=size)
        ).rowcount
        if mine != 1:
            raise AttemptLost(f"attempt {attempt_id} may not commit: its lease expired")
        pointer = Product.committed_attempt_id.is_(None) if replaces is None else Product.committed_attempt_id == replaces
        moved = session.execute(
            update(Product).where(Product.key == key, pointer).values(committed_attempt_id=attempt_id, committed_at=now)
        ).rowcount
        if moved != 1:  # raising rolls the attempt's own update back too
            raise AttemptLost(f"attempt {attempt_id} may not commit: product {key[:12]} was committed meanwhile")
        if replaces is not None:
            session.execute(
                update(ProductAttempt).where(ProductAttempt.id == replaces).values(state=AttemptState.SUPERSEDED.value)
            )


def fail_attempt(catalog: Catalog, attempt_id: str, error: str) -> None:
    with catalog.session() as session:
        session.execute(
            update(ProductAttempt)
            .where(ProductAttempt.id == attempt_id, ProductAttempt.state == AttemptState.RUNNING.value)
            .values(state=AttemptState.FAILED.value, ended_at=utcnow(), error=error)
        )


def garbage_attempts(catalog: Catalog, *, before: datetime) -> list[AttemptInfo]:
    """Attempts whose files nothing needs, idle since before `before`: failed, running past
    their lease, or superseded by a later commit."""
    before = as_utc(before)
    with catalog.session() as session:
        rows = session.scalars(select(ProductAttempt).where(or_(
            and_(ProductAttempt.state.in_([AttemptState.FAILED.value, AttemptState.SUPERSEDED.value]),
                 func.coalesce(ProductAttempt.ended_at, ProductAttempt.started_at) < before),
            and_(ProductAttempt.state == AttemptState.RUNNING.value, ProductAttempt.lease_expires_at < before),
        )).order_by(ProductAttempt.started_at))
        return [AttemptInfo.of(row) for row in rows]


def forget_attempts(catalog: Catalog, attempt_ids: Sequence[str]) -> None:
    """Delete attempt rows whose files are gone (never a committed one: the pointer guards it)."""
    if not attempt_ids:
        return
    with catalog.session() as session:
        session.execute(
            delete(ProductAttempt).where(ProductAttempt.id.in_(list(attempt_ids)),
                                         ProductAttempt.state != AttemptState.COMMITTED.value)
        )


def forget_product(catalog: Catalog, key: str) -> None:
    with catalog.session() as session:
        session.execute(delete(ProductAttempt).where(ProductAttempt.product_key == key))
        session.execute(delete(Product).where(Product.key == key))


__all__ = [
    "AttemptInfo",
    "InputObject",
    "ProductInfo",
    "RecordingInputs",
    "claim_attempt",
    "commit_attempt",
    "current_inputs",
    "fail_attempt",
    "find_product",
    "forget_attempts",
    "forget_product",
    "garbage_attempts",
    "get_product",
    "list_products",
    "previous_product",
    "renew_lease",
    "select_recordings",
]
