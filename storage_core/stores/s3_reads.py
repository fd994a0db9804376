"""Ranged reads of one S3 bucket without a botocore client: `GetTail` and `GetRange` only.

For a reader that holds its endpoint and credentials already (a stream table's location
names them for delta-rs): the requests are signed by `QuerySigner.for_endpoint` and sent
over lean connections (storage_core.stores.lean), so a read of a few small objects does
not first spend ~0.15 s of CPU building botocore's clients (measured: `open_store` of an
s3:// URI, 0.15-0.21 s, against a whole 10 MB table read by pyarrow in 0.07 s).

The answers are checked as S3Store checks its own (Content-Range, length) and refusals
come out as the same Ferry errors (storage_core.stores.s3_errors, S3Store's mapping too);
nothing of botocore is imported. A request
pinned by `if_match` whose answer names another ETag raises PreconditionFailed (a server
that ignores If-Match must not mix versions either). No retries here: a broken kept-alive
connection is replaced once by the lean connections, as for S3Store's lean requests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from storage_core.errors import PreconditionFailed, RangeNotHonoured, StorageUnavailable
from storage_core.keys import validate_key
from storage_core.stores.base import Tail
from storage_core.stores.lean import LEAN_URL_SECONDS, LeanConnections, error_code
from storage_core.stores.presign import Keys, QuerySigner
from storage_core.stores.s3_errors import refused

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED = re.compile(r"bytes \*/(\d+)")
_connections = LeanConnections()


class S3RangeReads:
    """Tails and ranges of objects in `bucket`, signed by `signer` (see module)."""

    def __init__(self, bucket: str, signer: QuerySigner) -> None:
        self.bucket = bucket
        self.uri = f"s3://{bucket}"
        self.signer = signer

    @classmethod
    def from_options(cls, bucket: str, options: Mapping[str, str]) -> S3RangeReads | None:
        """Reads signed with the endpoint, region and keys `options` name (delta-rs's
        option names, storage_core.streams.table.storage_options); None when one of them is
        missing (no endpoint: AWS itself, whose addressing botocore decides) or a proxy is
        configured, which lean connections do not honour."""
        endpoint, access, secret = (options.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        if not (endpoint and access and secret) or not LeanConnections.usable():
            return None
        keys = Keys(access, secret, options.get("AWS_SESSION_TOKEN") or None)
        try:
            signer = QuerySigner.for_endpoint(endpoint, bucket, region=options.get("AWS_REGION") or "us-east-1", keys=keys)
        except ValueError:
            return None
        return cls(bucket, signer)

    def _send(self, key: str, range_header: str, at_most: int, if_match: str | None) -> tuple[int, bytes, dict[str, str]]:
        headers = {"Range": range_header, **({"If-Match": if_match} if if_match else {})}
        url = self.signer.url("GET", key, expires_in=LEAN_URL_SECONDS)
        status, body, answer = _connections.send("GET", url, b"", headers, at_most=at_most)
        assert isinstance(body, bytes)
        return status, body, answer

    def _refused(self, key: str, status: int, body: bytes) -> None:
        if not 200 <= status < 300:
            raise refused(self.bucket, key, "read", code=error_code(body, status), status=status)

    def _answered(self, key: str, status: int, answer: dict[str, str]) -> tuple[int, int, int]:
        """(start, end exclusive, size) of a 206 answer; RangeNotHonoured for anything else."""
        match = _CONTENT_RANGE.fullmatch(answer.get("content-range", "").strip()) if status == 206 else None
        if match is None:
            raise RangeNotHonoured(f"{self.uri}/{key}: server ignored Range ({status} instead of 206)", key=key)
        start, last, size = (int(g) for g in match.groups())
        return start, last + 1, size

    def get_tail(self, key: str, length: int, *, if_match: str | None = None) -> Tail:
        length = max(1, length)
        validate_key(key)
        status, body, answer = self._send(key, f"bytes=-{length}", length, if_match)
        empty = _UNSATISFIED.fullmatch(answer.get("content-range", "").strip()) if status == 416 else None
        if empty is not None and int(empty.group(1)) == 0:  # an empty object has no satisfiable suffix
            return Tail(data=b"", start=0, size=0, etag=answer.get("etag", ""))
        self._refused(key, status, body)
        start, end, size = self._answered(key, status, answer)
        if len(body) != end - start:
            raise StorageUnavailable(f"{self.uri}/{key}: short read of the tail", key=key)
        self._same_version(key, answer, if_match)
        return Tail(data=body, start=start, size=size, etag=answer.get("etag", ""))

    def get_range(self, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return b""
        validate_key(key)
        status, body, answer = self._send(key, f"bytes={start}-{end - 1}", end - start, if_match)
        self._refused(key, status, body)
        answered_start, answered_end, size = self._answered(key, status, answer)
        if answered_start != start or answered_end > end:
            raise RangeNotHonoured(f"{self.uri}/{key}: asked for bytes [{start}, {end}), "
                                   f"got [{answered_start}, {answered_end})", key=key)
        self._same_version(key, answer, if_match)
        expected = min(end, size) - start
        if len(body) != expected:
            raise StorageUnavailable(f"{self.uri}/{key}: short read ({len(body)} of {expected} bytes)", key=key)
        return body

    def _same_version(self, key: str, answer: dict[str, str], if_match: str | None) -> None:
        if if_match and answer.get("etag") not in (None, if_match):
            raise PreconditionFailed(f"{self.uri}/{key} changed while it was being read", key=key)


__all__ = ["S3RangeReads"]
