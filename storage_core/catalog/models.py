"""Ferry's catalog tables (SQLAlchemy 2). They live in Ferry's own database, never Prefect's.

    devices ─< recordings ─< stored_objects ─< object_topics
    devices ─< device_tokens
    transactions ─< transaction_items ─< multipart_parts
    transactions ─ upload_events (at most one per transaction: the durable "completed" event)
    recordings ─< products ─< product_attempts   (derived data keyed by lineage: storage_core/products)
    devices ─< streams ─< stream_appends (telemetry: one table per stream, its committed appends)
    work_jobs ─< work_items   (work split for several workers: each item claimed under a lease)

A transaction item claims its destination while it is in flight: a partial unique index
on (store_uri, key) over the active states makes two concurrent ingests of the same file
store it once.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.orm import configure_mappers as _configure_all


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class TransactionStatus(str, enum.Enum):
    PENDING = "pending"  # begun, nothing sent yet
    UPLOADING = "uploading"  # bytes moving; resumable if the process dies
    COMPLETED = "completed"
    ABORTED = "aborted"  # multipart uploads aborted, items released


class ItemStatus(str, enum.Enum):
    PENDING = "pending"
    UPLOADING = "uploading"
    STORED = "stored"
    SKIPPED = "skipped"  # why: the item's `skip_reason`
    FAILED = "failed"
    ABORTED = "aborted"


class SourceKind(str, enum.Enum):
    """Where an item's bytes come from, and so who can send them."""

    FILE = "file"  # a local file (source_path), identified by size and mtime
    OBJECT = "object"  # an object under a landing bucket prefix (source_path is its URI), by size and ETag
    DEVICE = "device"  # a file on a device (source_path is DEVICE/RECORDING/...): only the device sends it


class SkipReason(str, enum.Enum):
    IDENTICAL = "identical"  # identical bytes already stored at the destination
    BUSY = "busy"  # another open transaction is uploading the destination


ACTIVE_ITEM_STATES = (ItemStatus.PENDING.value, ItemStatus.UPLOADING.value)
DONE_ITEM_STATES = (ItemStatus.STORED.value, ItemStatus.SKIPPED.value)  # its bytes are in the store
OPEN_TRANSACTION_STATES = (TransactionStatus.PENDING.value, TransactionStatus.UPLOADING.value)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Recording(Base):
    __tablename__ = "recordings"
    __table_args__ = (UniqueConstraint("device_id", "name", name="uq_recording_device_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    objects: Mapped[list[StoredObject]] = relationship(back_populates="recording")


class StoredObject(Base):
    __tablename__ = "stored_objects"
    __table_args__ = (UniqueConstraint("store_uri", "key", name="uq_object_location"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recording_id: Mapped[int | None] = mapped_column(ForeignKey("recordings.id"), index=True)
    store_uri: Mapped[str] = mapped_column(String(1024))
    key: Mapped[str] = mapped_column(String(1024))
    relative_path: Mapped[str] = mapped_column(String(1024))
    modality: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    crc32c: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(256))
    transaction_id: Mapped[str | None] = mapped_column(ForeignKey("transactions.id"))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    summary: Mapped[str | None] = mapped_column(Text)  # JSON, filled by the summarize path
    summarized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    summary_error: Mapped[str | None] = mapped_column(Text)  # why the last summarize failed (e.g. not MCAP)

    recording: Mapped[Recording | None] = relationship(back_populates="objects")
    topics: Mapped[list[ObjectTopic]] = relationship(order_by="ObjectTopic.topic", cascade="all, delete-orphan")

    @property
    def uri(self) -> str:
        return f"{self.store_uri}/{self.key}"


class ObjectTopic(Base):
    """One topic of a summarized MCAP object: what `query --topic` searches."""

    __tablename__ = "object_topics"

    object_id: Mapped[int] = mapped_column(ForeignKey("stored_objects.id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(1024), primary_key=True)
    message_count: Mapped[int] = mapped_column(BigInteger, default=0)
    schema_name: Mapped[str | None] = mapped_column(String(1024))
    message_encoding: Mapped[str | None] = mapped_column(String(128))


Index("ix_object_topics_topic", ObjectTopic.topic)


class DeviceToken(Base):
    """A device's gateway credential. Only a hash of the token is stored; a revoked token
    keeps its row (with `revoked_at`) so the audit trail survives."""

    __tablename__ = "device_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UploadEvent(Base):
    """The durable record of "this transaction completed" (an outbox row). Its id is the
    Prefect event id, fixed when the row is written, so emitting it again after a crash or
    a replayed complete never starts a second flow run."""

    __tablename__ = "upload_events"

    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    emitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Transaction(Base):
    __tablename__ = "transactions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(String(128), index=True)
    origination: Mapped[str] = mapped_column(String(256))
    destination: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), index=True, default=TransactionStatus.PENDING.value)
    error: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    items: Mapped[list[TransactionItem]] = relationship(
        back_populates="transaction", order_by="TransactionItem.id", cascade="all, delete-orphan"
    )


class TransactionItem(Base):
    __tablename__ = "transaction_items"
    __table_args__ = (
        Index(
            "uq_item_active_destination",
            "store_uri",
            "key",
            unique=True,
            sqlite_where=text("status IN ('pending', 'uploading')"),
            postgresql_where=text("status IN ('pending', 'uploading')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), index=True)
    source_kind: Mapped[str] = mapped_column(String(16), default=SourceKind.FILE.value, server_default=SourceKind.FILE.value)
    source_path: Mapped[str] = mapped_column(String(4096), index=True)  # its meaning: see SourceKind
    device_id: Mapped[str] = mapped_column(String(128))
    recording: Mapped[str] = mapped_column(String(512))
    relative_path: Mapped[str] = mapped_column(String(1024))
    modality: Mapped[str] = mapped_column(String(64))
    store_uri: Mapped[str] = mapped_column(String(1024))
    key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)  # a local source's identity, with size
    source_etag: Mapped[str | None] = mapped_column(String(256))  # an object source's identity, with size
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING.value)
    upload_id: Mapped[str | None] = mapped_column(String(1024))
    part_size: Mapped[int | None] = mapped_column(BigInteger)
    crc32c: Mapped[int | None] = mapped_column(BigInteger)
    etag: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(String(16))  # a SkipReason, set with status skipped
    # a device's item: the ETag of the stored version it replaces (None: a new path), and
    # its declared part CRC32Cs (JSON list; multipart only)
    replaces_etag: Mapped[str | None] = mapped_column(String(256))
    part_crc32c: Mapped[str | None] = mapped_column(Text)
    # a device's single-PUT item: a URL was handed out for its staging key (recorded before
    # the URL exists), so an abort must fence that key
    url_issued: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    transaction: Mapped[Transaction] = relationship(back_populates="items")
    # loaded with the items, in one query per 500 of them (not one per item when a
    # 10,000-item transaction is viewed)
    parts: Mapped[list[MultipartPart]] = relationship(
        order_by="MultipartPart.part_number", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def uri(self) -> str:
        return f"{self.store_uri}/{self.key}"


class MultipartPart(Base):
    __tablename__ = "multipart_parts"

    item_id: Mapped[int] = mapped_column(ForeignKey("transaction_items.id"), primary_key=True)
    part_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    crc32c: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(256))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AttemptState(str, enum.Enum):
    """A product attempt's life: running (holds a lease) → committed (the product's files) →
    superseded (a later attempt of the same key committed; still readable until gc), or
    running → failed. A running attempt past its lease is broken: it never commits."""

    RUNNING = "running"
    COMMITTED = "committed"
    SUPERSEDED = "superseded"
    FAILED = "failed"


class Product(Base):
    """One lineage key: what was derived, from what, by which code and options. Its data is
    the attempt `committed_attempt_id` names (None: nothing committed yet); changing that
    pointer is the publish, a compare-and-set."""

    __tablename__ = "products"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the canonical lineage
    product: Mapped[str] = mapped_column(String(64), index=True)
    recording_id: Mapped[int | None] = mapped_column(ForeignKey("recordings.id"), index=True)
    lineage: Mapped[str] = mapped_column(Text)  # the canonical JSON the key hashes
    committed_attempt_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProductAttempt(Base):
    """One try at writing a product's files under its own prefix. At most one attempt of a
    key runs at a time (a partial unique index), so two derives of one key compute it once."""

    __tablename__ = "product_attempts"
    __table_args__ = (
        Index(
            "uq_attempt_running_key",
            "product_key",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    product_key: Mapped[str] = mapped_column(ForeignKey("products.key", ondelete="CASCADE"), index=True)
    store_uri: Mapped[str] = mapped_column(String(1024))
    prefix: Mapped[str] = mapped_column(String(1024))  # every file of the attempt, and its manifest.json, is under it
    state: Mapped[str] = mapped_column(String(16), default=AttemptState.RUNNING.value)
    owner: Mapped[str | None] = mapped_column(String(256))  # host:pid, for people
    settings: Mapped[str | None] = mapped_column(Text)  # JSON: the untracked options it was written with
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    files: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    bytes: Mapped[int | None] = mapped_column(BigInteger)


class Stream(Base):
    """A device's telemetry stream: rows committed to its table in the store, in order.
    `committed_end` (the row offset after the last committed row) never decreases; appends
    carry an `epoch`, and one older than the stream's is fenced. Its row is the lock that
    serializes the stream's writers."""

    __tablename__ = "streams"
    __table_args__ = (UniqueConstraint("device_id", "name", name="uq_stream_device_name"),)

    id: Mapped[str] = mapped_column(String(300), primary_key=True)  # DEVICE/NAME
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    committed_end: Mapped[int] = mapped_column(BigInteger, default=0)
    table_uri: Mapped[str] = mapped_column(String(1024))
    table_format: Mapped[str] = mapped_column(String(16))  # "delta"
    table_version: Mapped[int | None] = mapped_column(BigInteger)  # the table's version after the last commit
    arrow_schema: Mapped[str | None] = mapped_column(Text)  # base64 of the Arrow IPC schema; None before the first rows
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class StreamAppend(Base):
    """One committed append: what a repeated append is compared with (same rows and digest:
    a duplicate, acknowledged; anything else at those offsets: diverged)."""

    __tablename__ = "stream_appends"

    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), primary_key=True)
    first_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the append's Arrow IPC body
    epoch: Mapped[int] = mapped_column(BigInteger)
    table_version: Mapped[int] = mapped_column(BigInteger)
    committed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkStatus(str, enum.Enum):
    """A work item's life: pending → claimed (a worker holds its lease) → done, or failed
    after its job's `max_attempts` claims; a claimed item past its lease is claimable again."""

    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


class WorkJob(Base):
    """A piece of work split into items that workers on any host claim from the catalog
    (storage_core.catalog.work): an ingest per recording group, a derive per batch."""

    __tablename__ = "work_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # ingest | derive | restore
    parameters: Mapped[str] = mapped_column(Text)  # JSON: what every item of the job shares
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | finished
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkItem(Base):
    """One claimable piece of a job. `attempts` counts its claims and fences them: a
    worker's renew, finish or fail names the attempt it holds, so a worker whose lease was
    taken over changes nothing."""

    __tablename__ = "work_items"
    __table_args__ = (Index("ix_work_items_job_status", "job_id", "status"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("work_jobs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(Text)  # JSON: the recording group, the batch
    status: Mapped[str] = mapped_column(String(16), default=WorkStatus.PENDING.value)
    claimed_by: Mapped[str | None] = mapped_column(String(256))  # host:pid:..., for people and fencing
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)  # one line: why the last attempt failed
    result: Mapped[str | None] = mapped_column(Text)  # JSON: what the finished item produced
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def configure_mappers() -> None:
    """Set up every mapper now; SQLAlchemy otherwise does it at a process's first ORM query
    (~0.3 CPU-s here, paid again by every child of a fork server that did not do it first)."""
    _configure_all()


__all__ = [
    "ACTIVE_ITEM_STATES",
    "AttemptState",
    "configure_mappers",
    "DONE_ITEM_STATES",
    "OPEN_TRANSACTION_STATES",
    "Base",
    "Device",
    "DeviceToken",
    "ItemStatus",
    "MultipartPart",
    "ObjectTopic",
    "Product",
    "ProductAttempt",
    "Recording",
    "SkipReason",
    "SourceKind",
    "StoredObject",
    "Stream",
    "StreamAppend",
    "Transaction",
    "TransactionItem",
    "TransactionStatus",
    "UploadEvent",
    "WorkItem",
    "WorkJob",
    "WorkStatus",
]
