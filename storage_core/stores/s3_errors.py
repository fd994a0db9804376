"""An S3 refusal (its error code and HTTP status) as a Ferry error: the one mapping, used by
S3Store for botocore's answers and by the lean reads (storage_core.stores.s3_reads) for
their own. Imports nothing of botocore, so a reader that builds no client loads none."""

from __future__ import annotations

from storage_core.errors import (
    AccessDenied,
    BucketNotFound,
    IntegrityError,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken", "ExpiredToken"}
_UNAVAILABLE = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


def refused(bucket: str, key: str | None, action: str, *, code: str, status: int | None, message: str = "") -> StorageError:
    """The Ferry error for the store refusing `action` on `key` (None: the bucket itself)
    with S3 error `code` and HTTP `status`."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    message = message or code
    if code == "NoSuchBucket":
        return BucketNotFound(f"bucket {bucket!r} does not exist", key=key)
    if code in _NOT_FOUND or status == 404 and code != "NoSuchUpload":
        return ObjectNotFound(f"no such object: {where}", key=key)
    if code in _DENIED or status == 403:
        return AccessDenied(f"access denied to {where} ({code}): check credentials and permissions", key=key)
    if code == "PreconditionFailed" or status == 412:
        if action == "read":
            return PreconditionFailed(f"{where} changed while it was being read", key=key)
        return PreconditionFailed(f"{action} {where}: refused, the object exists or changed meanwhile", key=key)
    if code in ("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"):
        return IntegrityError(f"{action} {where}: the server received bytes that fail their CRC32C", key=key, retryable=True)
    if code == "NoSuchUpload":
        return UploadNotFound(f"{action} {where}: the multipart upload no longer exists", key=key)
    if code in _UNAVAILABLE or (status or 0) >= 500:
        return StorageUnavailable(f"{action} {where}: server error {code or status}", key=key)
    return StorageError(f"{action} {where}: {code}: {message}", key=key)


__all__ = ["refused"]
