"""S3-compatible object store on boto3 (AWS, SeaweedFS, MinIO, ...).

Choices that are not boto3's defaults, and why:
- checksums are sent explicitly as `x-amz-checksum-crc32c` headers computed by Ferry, and
  boto3's own trailer checksums are off (`when_required`): several S3-compatible servers
  mishandle aws-chunked trailers, and an explicit header is verified by the server
  (BadDigest on mismatch) at no extra cost to us;
- path-style addressing when an endpoint URL is set (local servers have no DNS buckets);
- the CRT transfer path is never used: it ignores `endpoint_url`;
- presigned URLs after the first are signed by storage_core.stores.presign (botocore's own
  first URL sets their shape): botocore spends ~0.75 ms of CPU on each;
- small PUTs, multipart parts and range reads are sent lean (storage_core.stores.lean:
  signed by that signer, over kept-alive `http.client` connections) unless a proxy is set.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
import botocore.exceptions
import botocore.session
import urllib3.exceptions
from botocore.config import Config

from storage_core.checksums import from_header, to_header
from storage_core.errors import (
    AccessDenied,
    IntegrityError,
    RangeNotHonoured,
    StorageError,
    StorageUnavailable,
)
from storage_core.keys import validate_key
from storage_core.stores.base import ObjectMeta, PendingUpload, StoredPart, Tail
from storage_core.stores.lean import LEAN_URL_SECONDS, LeanConnections, error_code, put_empty
from storage_core.stores.presign import QuerySigner
from storage_core.stores.s3_errors import refused

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_NETWORK_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,  # a body shorter than its Content-Length
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,  # IncompleteRead while reading a body straight from http.client
    ConnectionError,
    TimeoutError,
)
_lean_connections = LeanConnections()  # lean PUTs and range reads: one kept-alive connection per thread and origin


def _refusal(status: int, body: bytes, operation: str) -> botocore.exceptions.ClientError:
    """A lean request's error answer as botocore would raise it, for the one translation
    (_translated) to turn into a Ferry error."""
    return botocore.exceptions.ClientError(
        {"Error": {"Code": error_code(body, status), "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation)


@contextmanager
def _translated(bucket: str, key: str | None, action: str):
    """The one place botocore and urllib3 errors become Ferry errors (original kept as __cause__);
    a refusal's code and status are mapped by storage_core.stores.s3_errors."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise refused(bucket, key, action, code=str(error.get("Code", "")), message=error.get("Message") or "",
                      status=exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise AccessDenied(f"no S3 credentials found for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", key=key) from exc
    except _NETWORK_ERRORS as exc:
        raise StorageUnavailable(f"{action} {where}: {type(exc).__name__}: {exc}", key=key) from exc


# Requests no Ferry loop retries (listings, whole-object reads, deletes, aborts) get
# botocore's standard mode; see the budget table in storage_core.retry
UNLOOPED_ATTEMPTS = 3


_loader: Any = None  # botocore's JSON models (S3's API, endpoints, rules), parsed once per process
_loader_lock = threading.Lock()


def new_session() -> Any:
    """A boto3 session (its own credentials and configuration) whose clients are built from
    the process's one parsed copy of botocore's models (see `_botocore_session`)."""
    return boto3.session.Session(botocore_session=_botocore_session())


def _botocore_session() -> botocore.session.Session:
    """A fresh botocore session (its own credentials and configuration) that shares the
    process's one data loader: each session would otherwise parse S3's models again,
    ~0.1 CPU-s a client (two clients per command), against ~0.01 with the models shared."""
    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return core


def preload_models() -> None:
    """Parse S3's models into the shared loader now, by building one client that is never
    used (fixed keys: no credential lookup, no request). A process that forks a child per
    command (ferry.cli.warm) calls it once; its children then build clients from the
    parsed models."""
    session = boto3.session.Session(botocore_session=_botocore_session(), aws_access_key_id="preload",
                                    aws_secret_access_key="preload", region_name="us-east-1")
    session.client("s3", config=Config(signature_version="s3v4"))


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_pool_connections: int = 16,
    attempts: int = 1,
    session: Any | None = None,
) -> Any:
    """A boto3 S3 client configured for Ferry; credentials come from the usual AWS chain.
    `attempts` is botocore's own budget per request: 1 (no retry) for requests that a Ferry
    loop retries, so the two never multiply. Clients made from one `session` share its
    parsed service model; sessions from `new_session` share one too (~0.1 s of JSON per
    client otherwise)."""
    session = session or new_session()
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        signature_version="s3v4",  # presigned URLs too (boto3 may otherwise presign with SigV2)
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or session.region_name or "us-east-1",
        config=config,
    )


def _meta(key: str, response: dict[str, Any]) -> ObjectMeta:
    checksum = response.get("ChecksumCRC32C")
    return ObjectMeta(
        key=key,
        size=int(response["ContentLength"]),
        etag=response["ETag"],
        last_modified=response.get("LastModified"),
        crc32c=from_header(checksum) if checksum and "-" not in checksum else None,
    )


_signers: dict[tuple[int, str], tuple[Any, QuerySigner | None]] = {}  # (client, bucket) -> signer
_signers_lock = threading.Lock()


class S3Store:
    """One bucket. Keys are validated before any request is made.

    Every capability of an ObjectStore, plus Presign, DeleteMany and PutEmptyMany."""

    def __init__(
        self,
        bucket: str,
        *,
        client: Any | None = None,
        unlooped_client: Any | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 16 * 1024 * 1024,
        max_pool_connections: int = 16,
        unlooped_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.bucket = bucket
        self.uri = f"s3://{bucket}"
        self.multipart_threshold = multipart_threshold
        # `client` never retries: its requests (HEAD, ranged GETs, PUT, parts, create and
        # complete) run inside Ferry's retry loops. `unlooped_client` sends the requests no
        # loop retries, with botocore's standard retries (storage_core.retry's table).
        self.client = client or make_client(
            endpoint_url=endpoint_url, region=region, max_pool_connections=max_pool_connections
        )
        if unlooped_client is None and unlooped_factory is None:
            unlooped_client = client if client is not None else make_client(
                endpoint_url=endpoint_url, region=region, max_pool_connections=max_pool_connections,
                attempts=UNLOOPED_ATTEMPTS,
            )
        # `unlooped_factory` builds it at first use: a command that only reads and writes
        # objects (a download of small files, lean requests) never needs it, and building a
        # botocore client costs ~20 ms of CPU
        self._unlooped_client, self._unlooped_factory = unlooped_client, unlooped_factory
        self._unlooped_lock = threading.Lock()

    @property
    def unlooped_client(self) -> Any:
        if self._unlooped_client is None:
            with self._unlooped_lock:
                if self._unlooped_client is None:
                    assert self._unlooped_factory is not None
                    self._unlooped_client = self._unlooped_factory()
        return self._unlooped_client

    def _where(self, key: str | None, action: str):
        if key is not None:
            validate_key(key)
        return _translated(self.bucket, key, action)

    # --- reads -----------------------------------------------------------------------
    def head(self, key: str) -> ObjectMeta:
        with self._where(key, "head"):
            response = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        return _meta(key, response)

    def _get(self, key: str, range_header: str, if_match: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": range_header}
        if if_match:
            params["IfMatch"] = if_match
        return self.client.get_object(**params)

    def _get_range(self, key: str, start: int, end: int, if_match: str | None) -> tuple[Any, int]:
        """GET [start, end) and check the answer's Content-Range; return the streaming body and
        how many bytes it holds (fewer than asked only past the object's end)."""
        response = self._get(key, f"bytes={start}-{end - 1}", if_match)
        try:
            return response["Body"], self._range_answered(key, response, start, end)
        except RangeNotHonoured:
            response["Body"].close()
            raise

    def _range_answered(self, key: str, response: dict[str, Any], start: int, end: int) -> int:
        """How many bytes an answer to GET [start, end) holds, by its Content-Range
        (`response` as botocore gives it); RangeNotHonoured when the server ignored or
        mis-answered the Range."""
        answered = _parse_content_range(response)
        if answered is None:
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise RangeNotHonoured(f"s3://{self.bucket}/{key}: server ignored Range ({status} instead of 206)", key=key)
        if answered[0] != start or answered[1] > end:
            raise RangeNotHonoured(
                f"s3://{self.bucket}/{key}: asked for bytes [{start}, {end}), got [{answered[0]}, {answered[1]})",
                key=key,
            )
        return min(end, answered[2]) - start

    def get_range(self, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return b""
        with self._where(key, "read"):
            body, expected = self._get_range(key, start, end, if_match)
            data = body.read()
        if len(data) != expected:
            raise StorageUnavailable(f"s3://{self.bucket}/{key}: short read ({len(data)} of {expected} bytes)", key=key)
        return data

    def get_range_into(self, key: str, start: int, buffer: memoryview, *, if_match: str | None = None) -> int:
        if start < 0:
            raise ValueError(f"bad range start {start}")
        if not len(buffer):
            return 0
        signer = self._lean_signer()
        if signer is not None:
            return self._lean_get_into(signer, key, start, buffer, if_match)
        with self._where(key, "read"):
            body, expected = self._get_range(key, start, start + len(buffer), if_match)
            got = _fill(body, buffer[:expected])
        if got != expected:
            raise StorageUnavailable(f"s3://{self.bucket}/{key}: short read ({got} of {expected} bytes)", key=key)
        return got

    def _lean_get_into(self, signer: QuerySigner, key: str, start: int, buffer: memoryview, if_match: str | None) -> int:
        """get_range_into over a lean connection (see _lean_put): the same checks of the
        answer's Content-Range, the same errors."""
        end = start + len(buffer)
        headers = {"Range": f"bytes={start}-{end - 1}", **({"If-Match": if_match} if if_match else {})}
        with self._where(key, "read"):
            url = signer.url("GET", key, expires_in=LEAN_URL_SECONDS, params={}, headers={})
            status, got, answer = _lean_connections.send("GET", url, b"", headers, into=buffer)
            if not 200 <= status < 300:
                raise _refusal(status, got, "GetObject")
        expected = self._range_answered(
            key, {"ResponseMetadata": {"HTTPStatusCode": status}, "ContentRange": answer.get("content-range")}, start, end)
        if got != expected:
            raise StorageUnavailable(f"s3://{self.bucket}/{key}: short read ({got} of {expected} bytes)", key=key)
        return got

    def get_tail(self, key: str, length: int, *, if_match: str | None = None) -> Tail:
        with self._where(key, "read"):
            try:
                response = self._get(key, f"bytes=-{max(1, length)}", if_match)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                meta = self.head(key)  # an empty object has no satisfiable suffix
                return Tail(data=b"", start=0, size=meta.size, etag=meta.etag)
            answered = _parse_content_range(response)
            data = response["Body"].read()
        if answered is None:
            # a server that ignores Range sends the whole object: usable, but say so
            raise RangeNotHonoured(f"s3://{self.bucket}/{key}: server ignored Range (200 instead of 206)", key=key)
        start, end, size = answered
        if len(data) != end - start:
            raise StorageUnavailable(f"s3://{self.bucket}/{key}: short read of the tail", key=key)
        return Tail(data=data, start=start, size=size, etag=response["ETag"])

    def open_read(self, key: str, *, if_match: str | None = None) -> BinaryIO:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match:
            params["IfMatch"] = if_match
        with self._where(key, "read"):
            return self.unlooped_client.get_object(**params)["Body"]

    def list(self, prefix: str = "") -> Iterator[ObjectMeta]:
        paginator = self.unlooped_client.get_paginator("list_objects_v2")
        with self._where(None, "list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectMeta(item["Key"], int(item["Size"]), item["ETag"], item.get("LastModified"))

    def probe(self, prefix: str = "") -> None:
        """One listing of at most one key under `prefix`, for its answer only: BucketNotFound,
        AccessDenied or StorageUnavailable as `list` would raise them. Sent lean where it can
        be: a process's first botocore request costs ~40 ms of CPU (its endpoint rules and
        handlers), more than a one-file ingest's upload."""
        signer = self._lean_signer()
        if signer is None:
            next(iter(self.list(prefix)), None)
            return
        url = signer.url("GET", "", expires_in=LEAN_URL_SECONDS, params={"list-type": "2", "max-keys": "1", "prefix": prefix})
        with self._where(None, "list"):
            status, reply, _ = _lean_connections.send("GET", url, b"", {})
            if status != 200:
                raise _refusal(status, reply, "ListObjectsV2")

    # --- writes ----------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO | bytes, *, size: int, crc32c: int | None = None) -> ObjectMeta:
        body = source if isinstance(source, (bytes, bytearray)) else source.read(size)
        if len(body) != size:
            raise IntegrityError(f"{key}: expected {size} bytes, source gave {len(body)}", key=key)
        if self._lean_signer() is not None:
            return self._lean_put(key, bytes(body), crc32c)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentLength": size}
        if crc32c is not None:
            params["ChecksumCRC32C"] = to_header(crc32c)
        with self._where(key, "put"):
            response = self.client.put_object(**params)
        return ObjectMeta(key=key, size=size, etag=response["ETag"], crc32c=crc32c)

    def _lean_put(self, key: str, body: bytes, crc32c: int | None) -> ObjectMeta:
        """One PUT signed by the bulk signer and sent over a kept-alive `http.client`
        connection (storage_core.stores.lean): ~0.3 ms of CPU where botocore's
        put_object spends ~3.5 ms, which bounded uploads of many small files."""
        url = self.presign_put(key, expires_in=LEAN_URL_SECONDS, crc32c=crc32c, size=len(body))
        answer = self._lean_write(key, url, body, crc32c, action="put", operation="PutObject")
        return ObjectMeta(key=key, size=len(body), etag=answer.get("etag", ""), crc32c=crc32c)

    def _lean_write(self, key: str, url: str, body: bytes | memoryview, crc32c: int | None, *,
                    action: str, operation: str) -> dict[str, str]:
        """Send `body` to the presigned PUT `url` over a lean connection with the headers it
        was signed with (Content-Length, the CRC32C the store checks); the answer's headers.
        A refusal comes out as the same Ferry error botocore's would (`_translated`)."""
        headers = {"Content-Length": str(len(body))}
        if crc32c is not None:
            headers["x-amz-checksum-crc32c"] = to_header(crc32c)
        with self._where(key, action):
            status, reply, answer = _lean_connections.send("PUT", url, body, headers)
            if status != 200:
                raise _refusal(status, reply, operation)
        return answer

    def delete(self, key: str) -> None:
        with self._where(key, "delete"):
            self.unlooped_client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            chunk = keys[start:start + 1000]
            for key in chunk:
                validate_key(key)
            with self._where(None, "delete objects in"):
                response = self.unlooped_client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
                )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"s3://{self.bucket}: {len(errors)} of {len(chunk)} delete(s) refused, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip(),
                    key=first.get("Key"), retryable=first.get("Code") in ("InternalError", "SlowDown", "ServiceUnavailable"),
                )

    def put_empty_many(self, keys: list[str], *, max_in_flight: int) -> None:
        """Empty objects at `keys` (storage_core.stores.lean: bulk-signed, sent over
        lean connections); through botocore, one request at a time per worker, when the
        bulk signer cannot sign for this client."""
        for key in keys:
            validate_key(key)
        signer = self._query_signer()
        if signer is not None:
            failures = put_empty(lambda key: signer.url("PUT", key, expires_in=LEAN_URL_SECONDS, headers={"content-length": "0"}),
                                 keys, workers=max_in_flight)
        else:
            def put(key: str) -> tuple[str, str] | None:
                try:
                    self.put(key, b"", size=0)
                except StorageError as exc:
                    return key, str(exc)
                return None

            with ThreadPoolExecutor(max(1, min(max_in_flight, len(keys))), thread_name_prefix="ferry-put-empty") as pool:
                failures = [f for f in pool.map(put, keys) if f is not None]
        if failures:
            key, reason = failures[0]
            raise StorageError(f"s3://{self.bucket}: {len(failures)} of {len(keys)} empty object(s) not written, "
                               f"e.g. {key}: {reason}", key=key)

    # --- multipart -------------------------------------------------------------------
    def create_multipart(self, key: str) -> str:
        with self._where(key, "start multipart upload of"):
            return self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int) -> str:
        """The part's ETag. Sent lean (signed by the bulk signer, over a kept-alive
        `http.client` connection, the bytes handed to the socket as they are) unless a proxy
        is configured or the signer cannot sign for this client: then through botocore.
        Either way exactly one request, whose CRC32C the store checks (the part loop retries)."""
        action = f"upload part {part_number} of"
        if self._lean_signer() is not None:
            url = self.presign_upload_part(key, upload_id, part_number, expires_in=LEAN_URL_SECONDS, crc32c=crc32c,
                                           size=len(data))
            etag = self._lean_write(key, url, data, crc32c, action=action, operation="UploadPart").get("etag")
            if not etag:
                raise StorageUnavailable(f"{action} s3://{self.bucket}/{key}: the answer names no ETag", key=key)
            return etag
        with self._where(key, action):
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part_number,
                Body=data,
                ContentLength=len(data),
                ChecksumCRC32C=to_header(crc32c),
            )
        return response["ETag"]

    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        parts: list[StoredPart] = []
        paginator = self.unlooped_client.get_paginator("list_parts")
        with self._where(key, "list parts of"):
            for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                parts.extend(StoredPart(p["PartNumber"], int(p["Size"]), p["ETag"]) for p in page.get("Parts", []))
        return parts

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]], *,
                           if_match: str | None = None, if_none_match: bool = False) -> ObjectMeta:
        params: dict[str, Any] = _conditions(if_match, if_none_match)
        with self._where(key, "complete multipart upload of"):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
                **params,
            )
        return self.head(key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._where(key, "abort multipart upload of"):
            try:
                self.unlooped_client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise  # already gone is what an abort wants

    def list_multipart_uploads(self, prefix: str = "") -> list[PendingUpload]:
        uploads: list[PendingUpload] = []
        paginator = self.unlooped_client.get_paginator("list_multipart_uploads")
        with self._where(None, "list multipart uploads in"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                uploads.extend(
                    PendingUpload(u["Key"], u["UploadId"], u.get("Initiated")) for u in page.get("Uploads", [])
                )
        return uploads

    def copy(self, source: ObjectMeta, key: str, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectMeta:
        """Server-side copy of the version `source` describes (`x-amz-copy-source-if-match`
        its ETag) to `key` (content type and checksum kept), on the condition given:
        `if_match` the ETag `key` must have now, `if_none_match` that `key` must not exist
        (PreconditionFailed otherwise, and nothing changes). The copy's meta comes from the
        answer (no HEAD: a request less per file of a large complete)."""
        validate_key(source.key)
        params = _conditions(if_match, if_none_match)
        with self._where(key, "copy to"):
            result = self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source.key},
                                             CopySourceIfMatch=source.etag, **params)["CopyObjectResult"]
        etag = result["ETag"] if result["ETag"].startswith('"') else f'"{result["ETag"]}"'  # SeaweedFS leaves it unquoted
        return ObjectMeta(key=key, size=source.size, etag=etag, last_modified=result.get("LastModified"), crc32c=source.crc32c)

    # --- presign ---------------------------------------------------------------------
    def _query_signer(self) -> QuerySigner | None:
        """The bulk signer of this client and bucket (storage_core.stores.presign), made at
        first use and shared by every S3Store over them; None when botocore's URLs are not
        of the shape it reproduces (then botocore signs each URL)."""
        cache_key = (id(self.client), self.bucket)
        entry = _signers.get(cache_key)  # without the lock (asked once a request): entries are replaced whole
        if entry is not None and entry[0] is self.client:
            return entry[1]
        with _signers_lock:
            entry = _signers.get(cache_key)
            if entry is None or entry[0] is not self.client:
                try:
                    signer = QuerySigner(self.client, self.bucket)
                except (ValueError, KeyError, AttributeError) as exc:
                    log.warning("presigning through botocore for s3://%s: %s", self.bucket, exc)
                    signer = None
                entry = _signers[cache_key] = (self.client, signer)
        return entry[1]

    def _lean_signer(self) -> QuerySigner | None:
        """The bulk signer when requests may go over lean connections (storage_core.stores.lean):
        None when botocore's URLs are not of the shape it reproduces, or a proxy is set."""
        signer = self._query_signer()
        return signer if signer is not None and LeanConnections.usable() else None

    def _presign(self, operation: str, method: str, key: str, *, expires_in: int, crc32c: int | None,
                 size: int | None = None, content_type: str | None = None, if_none_match: bool = False,
                 params: dict[str, Any], query: dict[str, str]) -> str:
        """The one place URLs are signed. What is given is signed, so the store refuses a
        request that differs: its CRC32C, its Content-Length (`size`), its Content-Type and
        `If-None-Match: *`; the holder must send exactly those headers."""
        headers: dict[str, str] = {}
        if crc32c is not None:
            headers["x-amz-checksum-crc32c"] = to_header(crc32c)
            params["ChecksumCRC32C"] = to_header(crc32c)
        if size is not None:
            headers["content-length"] = str(size)
            params["ContentLength"] = size
        if content_type is not None:
            headers["content-type"] = content_type
            params["ContentType"] = content_type
        if if_none_match:
            headers["if-none-match"] = "*"
            params["IfNoneMatch"] = "*"
        with self._where(key, "presign"):
            signer = self._query_signer()
            if signer is not None:
                return signer.url(method, key, expires_in=expires_in, params=query, headers=headers)
            return self.client.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, "Key": key, **params}, ExpiresIn=expires_in
            )

    def presign_put(self, key: str, *, expires_in: int, crc32c: int | None = None, size: int | None = None,
                    content_type: str | None = None, if_none_match: bool = False) -> str:
        """A URL for one PUT of `key`, signed with what is given (see `_presign`);
        `if_none_match`: the URL creates `key`, never replaces it."""
        return self._presign("put_object", "PUT", key, expires_in=expires_in, crc32c=crc32c, size=size,
                             content_type=content_type, if_none_match=if_none_match, params={}, query={})

    def presign_get(self, key: str, *, expires_in: int) -> str:
        with self._where(key, "presign"):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
            )

    def presign_upload_part(
        self, key: str, upload_id: str, part_number: int, *, expires_in: int, crc32c: int | None = None,
        size: int | None = None,
    ) -> str:
        return self._presign(
            "upload_part", "PUT", key, expires_in=expires_in, crc32c=crc32c, size=size,
            params={"UploadId": upload_id, "PartNumber": part_number},
            query={"partNumber": str(part_number), "uploadId": upload_id},
        )

    # --- buckets (tests, demo, setup) ---------------------------------------------------
    def create_bucket(self) -> None:
        with self._where(None, "create bucket"):
            self.unlooped_client.create_bucket(Bucket=self.bucket)


def _conditions(if_match: str | None, if_none_match: bool) -> dict[str, Any]:
    """The conditional-write parameters of a request (S3 refuses both at once)."""
    if if_match is not None and if_none_match:
        raise ValueError("if_match and if_none_match exclude each other")
    return {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"} if if_none_match else {}


def _fill(body: Any, view: memoryview) -> int:
    """Read a streaming body into `view` until it is full or the body ends; return the count.

    botocore's body over urllib3 is read through the http.client response beneath it,
    whose `readinto` receives from the socket straight into `view`: no copy and no new
    memory per range. Reading each range into a new `bytes` cost the download twice the
    system time (the kernel maps and zeroes fresh pages for every range) and about a fifth
    of its speed on 1 GiB over loopback. Once the body is read to its end, the connection
    goes back to urllib3's pool, as urllib3 itself would do. Any other body (a different
    urllib3 or botocore, a wrapper) is read through its public `readinto`, which copies.
    """
    raw = getattr(body, "_raw_stream", None)
    response = getattr(raw, "_fp", None)
    direct = isinstance(response, http.client.HTTPResponse) and callable(getattr(raw, "release_conn", None))
    read = response.readinto if direct else body.readinto
    filled = 0
    try:
        while filled < len(view):
            count = read(view[filled:])
            if not count:
                break
            filled += count
    finally:
        if direct and response.isclosed():  # every byte of the answer was read
            raw.release_conn()
        else:
            body.close()  # a connection with unread bytes on it cannot serve another request
    return filled


def _parse_content_range(response: dict[str, Any]) -> tuple[int, int, int] | None:
    """(start, end exclusive, size) from a 206 answer, or None when the server sent 200."""
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    header = response.get("ContentRange")
    if status != 206 or not header:
        return None
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if not match:
        return None
    start, last, size = (int(g) for g in match.groups())
    return start, last + 1, size


__all__ = ["S3Store", "make_client", "new_session", "preload_models"]
