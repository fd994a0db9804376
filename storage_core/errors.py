"""Ferry's one error tree. Foreign errors are translated at each backend's edge.

    FerryError
    ├── ConfigError                  bad settings, URIs or keys: the caller must fix input
    │   ├── InvalidKey
    │   └── WritePlanError           a download plan has problems (all listed); nothing written
    ├── StorageError
    │   ├── ObjectNotFound           (also a FileNotFoundError)
    │   ├── BucketNotFound
    │   ├── UploadNotFound           a multipart upload id the store no longer knows
    │   ├── AccessDenied             wrong credentials or missing permission
    │   ├── PreconditionFailed       the object changed under us (ETag mismatch)
    │   ├── IntegrityError           bytes do not match a recorded size or checksum
    │   ├── SourceChanged            a local file changed while it was being read
    │   ├── RangeNotHonoured         the server ignored or mis-answered a Range request
    │   ├── StorageUnavailable       network or server trouble; retrying can help
    │   └── Unsupported              the store lacks a capability (e.g. presigning a folder)
    ├── TransferError
    │   ├── PartUploadFailed         carries key, upload_id, part_number
    │   ├── UploadAborted
    │   └── AbortFailed              an abort itself failed: the upload may be orphaned
    ├── CatalogError
    │   └── TransactionStateError    an operation that the transaction's state forbids
    └── TokenRefused                 a device token that is unknown, malformed or revoked

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


class SourceChanged(StorageError):
    pass


class RangeNotHonoured(StorageError):
    pass


class StorageUnavailable(StorageError):
    retryable = True


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


class TokenRefused(FerryError):
    """The presented device token is unknown, malformed or revoked (never retryable)."""


def one_line(exc: BaseException) -> str:
    """The first line of an error's message, for CLI output and flow-run states."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = [
    "AbortFailed",
    "AccessDenied",
    "BucketNotFound",
    "CatalogError",
    "ConfigError",
    "FerryError",
    "IntegrityError",
    "InvalidKey",
    "ObjectNotFound",
    "PartUploadFailed",
    "PreconditionFailed",
    "RangeNotHonoured",
    "SourceChanged",
    "StorageError",
    "StorageUnavailable",
    "TokenRefused",
    "TransactionStateError",
    "TransferError",
    "UploadAborted",
    "UploadNotFound",
    "Unsupported",
    "WritePlanError",
    "one_line",
]
