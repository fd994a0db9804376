"""Ferry's one error tree. Foreign errors are translated at each backend's edge.

    FerryError
    ├── ConfigError                  bad settings, URIs or keys: the caller must fix input
    │   ├── InvalidKey
    │   ├── WritePlanError           a download plan has problems (all listed); nothing written
    │   ├── ManifestRefused          a device manifest the gateway will not start (reason: invalid, too_large, forbidden)
    │   └── EventsNotConfigured      no Prefect API to send upload events to (they stay queued)
    ├── StorageError
    │   ├── ObjectNotFound           (also a FileNotFoundError)
    │   ├── BucketNotFound
    │   ├── UploadNotFound           a multipart upload id the store no longer knows
    │   ├── AccessDenied             wrong credentials or missing permission
    │   ├── PreconditionFailed       the object changed under us (ETag mismatch)
    │   ├── IntegrityError           bytes do not match a recorded size or checksum
    │   │   ├── FormatError          not a valid file of the expected format
    │   │   │   ├── NotMcapFile
    │   │   │   └── NotParquetFile
    │   │   └── CorruptFrame         a Ferry frame or CRC block that fails its check (carries offset)
    │   ├── SourceChanged            a local file changed while it was being read
    │   ├── RangeNotHonoured         the server ignored or mis-answered a Range request
    │   ├── StorageUnavailable       network or server trouble; retrying can help
    │   │   └── TableMoved           a stream's table was committed to by another writer since we looked
    │   └── Unsupported              the store lacks a capability (e.g. presigning a folder)
    ├── TransferError
    │   ├── PartUploadFailed         carries key, upload_id, part_number
    │   ├── UploadAborted
    │   └── AbortFailed              an abort itself failed: the upload may be orphaned
    ├── CatalogError
    │   ├── CatalogUnavailable       locked, unreachable or failing database; retrying can help
    │   ├── CatalogConflict          a concurrent writer claimed the same row first
    │   ├── UnknownUpload            no such device transaction (for this device)
    │   ├── LeaseLost                a work item's claim is gone (another worker claimed it): not finished
    │   └── TransactionStateError    an operation that the transaction's state forbids
    │       └── UploadIncomplete     complete before every byte was uploaded; nothing changed
    ├── StreamRefused                a telemetry append the stream refuses (carries committed_end, epoch)
    │   ├── AppendOutOfRange         its first offset is beyond the committed end: resend from there
    │   ├── AppendDiverged           other rows are already committed at its offsets
    │   ├── StaleEpoch               an older epoch than the stream's (another writer took over)
    │   └── SchemaRefused            a schema change other than added nullable columns
    ├── TokenRefused                 a device token that is unknown, malformed or revoked
    ├── GatewayError                 the device gateway refused (4xx) or could not be reached
    ├── GatewayBusy                  the gateway holds all the decoded appends it may at once (retryable)
    ├── ArchiveError                 a device's rolling archives cannot be written (disk full, read-only, in use)
    │   └── ArchiveFolderFull        the folder is over its retention budget of archives not yet uploaded
    ├── ProductError                 a derived product (storage_core/products)
    │   ├── ProductNotFound          no product or committed attempt under that key
    │   ├── ProductBusy              another live attempt is computing the key (retryable)
    │   └── AttemptLost              the attempt's lease expired or another commit won; nothing published
    ├── IngestFailed                 an ingest run's failure, in one line
    ├── RestoreFailed                batches of a fanned-out restore that failed (each reason recorded)
    ├── JobNotFinished               a fanned-out job still had items left when its parent stopped waiting
    ├── SummariesFailed              some objects could not be summarized (each reason recorded)
    └── BenchmarkFailed              a benchmark side exited non-zero or raised

Every error says whether a retry can help (`retryable`); tasks decide retries from that
flag alone.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error Ferry raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(FerryError):
    pass


class InvalidKey(ConfigError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class WritePlanError(ConfigError):
    """A download plan has problems; nothing was written. `problems` lists every one
    (storage_core.download.plan.PlanProblem: kind, message, key, path)."""

    MESSAGE_LIMIT = 50

    def __init__(self, problems: list) -> None:
        count = len(problems)
        head = f"download refused, nothing written: {problems[0].message}" + (f" (and {count - 1} more)" if count > 1 else "")
        lines = [f"  - {p.message}" for p in problems[: self.MESSAGE_LIMIT]]
        if count > self.MESSAGE_LIMIT:
            lines.append(f"  ... {count - self.MESSAGE_LIMIT} more")
        super().__init__("\n".join([head, *lines]))
        self.problems = problems


class ManifestRefused(ConfigError):
    """A manifest the gateway will not start: `reason` is 'invalid', 'too_large' or 'forbidden'."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class EventsNotConfigured(ConfigError):
    """No Prefect API to send to: the event stays in the outbox."""


class StorageError(FerryError):
    def __init__(self, message: str, *, key: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.key = key


class ObjectNotFound(StorageError, FileNotFoundError):
    pass


class BucketNotFound(StorageError):
    pass


class AccessDenied(StorageError):
    pass


class PreconditionFailed(StorageError):
    retryable = True  # a fresh attempt re-reads the current version


class UploadNotFound(StorageError):
    pass


class IntegrityError(StorageError):
    pass


class FormatError(IntegrityError):
    """The object is not a valid file of the expected format (reading again gives the same bytes)."""


class NotMcapFile(FormatError):
    """Neither end of the object carries the MCAP magic."""


class NotParquetFile(FormatError):
    """The object does not end with a Parquet footer (`PAR1`)."""


class CorruptFrame(IntegrityError):
    """A frame (storage_core.device.frame) or CRC block that fails its check; `offset` is
    where it starts in the input. Nothing in it was used."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class SourceChanged(StorageError):
    pass


class RangeNotHonoured(StorageError):
    pass


class StorageUnavailable(StorageError):
    retryable = True


class TableMoved(StorageUnavailable):
    """A stream's Delta table moved past the version a commit was judged on (another writer
    committed in between); nothing of ours was committed: read it again and judge again."""


class Unsupported(StorageError):
    pass


class TransferError(FerryError):
    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        upload_id: str | None = None,
        part_number: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.key = key
        self.upload_id = upload_id
        self.part_number = part_number


class PartUploadFailed(TransferError):
    pass


class UploadAborted(TransferError):
    pass


class AbortFailed(TransferError):
    pass


class CatalogError(FerryError):
    pass


class TransactionStateError(CatalogError):
    pass


class CatalogUnavailable(CatalogError):
    """The catalog database is locked, unreachable or failed; a later try can succeed."""

    retryable = True


class CatalogConflict(CatalogError):
    """A concurrent writer claimed the same row (a unique key) first; nothing was written."""


class UnknownUpload(CatalogError):
    """No such device transaction for this device (another device's is unknown too)."""


class LeaseLost(CatalogError):
    """A work item may not be renewed, finished or failed by this worker: its lease ran out
    and another worker claimed it (or it was settled already). Nothing was changed."""


class UploadIncomplete(TransactionStateError):
    """Complete was called before every byte was uploaded; nothing was changed."""


class StreamRefused(FerryError):
    """A telemetry append the stream refused; nothing was written. `committed_end` and
    `epoch` are the stream's as the refusal saw them (None when unknown)."""

    reason = "refused"

    def __init__(self, message: str, *, committed_end: int | None = None, epoch: int | None = None) -> None:
        super().__init__(message)
        self.committed_end = committed_end
        self.epoch = epoch


class AppendOutOfRange(StreamRefused):
    """The append starts beyond the committed end (BigQuery's OUT_OF_RANGE): resend from
    `committed_end`."""

    reason = "out_of_range"


class AppendDiverged(StreamRefused):
    """Rows at the append's offsets are already committed, and they are other rows."""

    reason = "diverged"


class StaleEpoch(StreamRefused):
    """The append's epoch is older than the stream's: a newer writer took the stream over."""

    reason = "stale_epoch"


class SchemaRefused(StreamRefused):
    """A schema change other than adding nullable columns."""

    reason = "schema"


class GatewayBusy(FerryError):
    """The gateway holds as many bytes of decoded appends as its bound allows, and none were
    freed in time: nothing of the request was judged; send it again later."""

    retryable = True


class TokenRefused(FerryError):
    """The presented device token is unknown, malformed or revoked (never retryable)."""


class GatewayError(FerryError):
    """The gateway refused (4xx: `retryable` False) or could not be reached / failed (retryable)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status


class ArchiveError(FerryError):
    """A device's rolling archive cannot be written or its folder cannot be used (disk full,
    read-only, another writer holds it). Records written before it stay in the folder."""

    def __init__(self, message: str, *, path: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.path = path


class ArchiveFolderFull(ArchiveError):
    """A record refused because the folder holds more archives not yet uploaded than its
    retention budget allows (the writer's `when_full="refuse"`); retry once the hand-off
    has uploaded some. Nothing was written; the writer stays usable."""

    retryable = True


class ProductError(FerryError):
    """A derived product cannot be planned, computed, published or read."""


class ProductNotFound(ProductError):
    """No product (or no committed attempt of it) under the key asked for."""


class ProductBusy(ProductError):
    """Another attempt holds a live lease on the key; it computes it, this one does not."""

    retryable = True


class AttemptLost(ProductError):
    """The attempt may not commit: its lease expired (another may have taken over) or the
    product's committed attempt changed under it. Its files stay unpublished (gc removes them)."""


class IngestFailed(FerryError):
    """An ingest run's failure: one line saying what happened to the transaction."""


class RestoreFailed(FerryError):
    """Batches of a fanned-out restore failed (each reason is recorded with its work item);
    the others are restored. A rerun with the same job id retries nothing failed: start a
    new restore, which keeps the files already restored (resume)."""


class JobNotFinished(FerryError):
    """A fanned-out job's parent stopped waiting while items were still pending or claimed:
    every claimer ended, or none touched an item for its stall limit, or its timeout
    passed. Its recorded work stands; run the parent again with the same job id to go on."""


class SummariesFailed(FerryError):
    """Some objects could not be summarized; each has its `summary_error` recorded."""


class BenchmarkFailed(FerryError):
    """A benchmark side exited non-zero or raised; the message carries its status and stderr tail."""


def one_line(exc: BaseException) -> str:
    """The first line of an error's message, for CLI output and flow-run states."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = [
    "AbortFailed",
    "AccessDenied",
    "AppendDiverged",
    "AppendOutOfRange",
    "ArchiveError",
    "ArchiveFolderFull",
    "AttemptLost",
    "BenchmarkFailed",
    "BucketNotFound",
    "CatalogConflict",
    "CatalogError",
    "CatalogUnavailable",
    "ConfigError",
    "CorruptFrame",
    "EventsNotConfigured",
    "FerryError",
    "FormatError",
    "GatewayBusy",
    "GatewayError",
    "IngestFailed",
    "IntegrityError",
    "JobNotFinished",
    "LeaseLost",
    "InvalidKey",
    "ManifestRefused",
    "NotMcapFile",
    "NotParquetFile",
    "ObjectNotFound",
    "PartUploadFailed",
    "PreconditionFailed",
    "ProductBusy",
    "ProductError",
    "ProductNotFound",
    "RestoreFailed",
    "RangeNotHonoured",
    "SchemaRefused",
    "SourceChanged",
    "StaleEpoch",
    "StorageError",
    "StorageUnavailable",
    "TableMoved",
    "StreamRefused",
    "SummariesFailed",
    "TokenRefused",
    "TransactionStateError",
    "TransferError",
    "UnknownUpload",
    "Unsupported",
    "UploadAborted",
    "UploadIncomplete",
    "UploadNotFound",
    "WritePlanError",
    "one_line",
]
