"""Presigned URLs in bulk: AWS Signature Version 4 in the query string, for one bucket.

Why not botocore's `generate_presigned_url` for each URL: it costs ~0.75 ms of CPU a URL
(endpoint rules, the event hooks, request serialization), 7.5 s for the URLs of one
10,000-file manifest, all of it holding the GIL. The signature itself is a few hashes.

What botocore decides stays botocore's: the first URL of a signer is botocore's own, and
from it the signer takes the bucket's base URL (endpoint, addressing style), the
credential scope (region, service) and the credentials the client holds. Every later URL
differs only in its key, its extra query parameters (`partNumber`, `uploadId`) and its
signed headers, each canonicalized as the SigV4 specification says ("Authenticating
Requests: Using Query Parameters"); tests/unit/test_presign.py checks them against botocore
signing the same request at the same instant.

`QuerySigner.for_endpoint` signs without a botocore client, for a reader that holds its
credentials already (a stream table's location): an explicit endpoint takes path-style
URLs, as Ferry's clients are configured for one (storage_core.stores.s3.make_client), so
there is nothing for botocore to decide; building a client would cost ~0.15 s of CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_PROBE_KEY = "ferry-presign-probe"


@lru_cache(maxsize=1024)  # the names and most values repeat from URL to URL
def _uri_encode(value: str, keep_slash: bool = False) -> str:
    return quote(value, safe="-_.~/" if keep_slash else "-_.~")


@dataclass(frozen=True)
class Keys:
    """Credentials given explicitly (the shape of botocore's frozen credentials)."""

    access_key: str
    secret_key: str
    token: str | None = None


class QuerySigner:
    """Presigns S3 requests for the bucket `bucket` of the boto3 `client` (thread-safe)."""

    def __init__(self, client: Any, bucket: str, *, clock=time.time) -> None:  # noqa: ANN001
        self.client, self.bucket, self.clock = client, bucket, clock
        probe = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
        parts = urlsplit(probe)
        if not parts.path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"unexpected presigned URL shape: {parts.path}")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if query.get("X-Amz-Algorithm") != ALGORITHM or query.get("X-Amz-SignedHeaders") != "host":
            raise ValueError("botocore did not presign with SigV4 query authentication")
        _access, _date, self.region, self.service, _terminal = query["X-Amz-Credential"].split("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        self.base_path = parts.path[: -len(_PROBE_KEY)]  # "/bucket/" (path style) or "/" (virtual host)
        self._keys: dict[tuple[str, str], bytes] = {}
        # what the client signs with (refreshed by botocore); AttributeError (then botocore
        # signs) when the client holds none we can read
        self._credentials: Callable[[], Any] = client._request_signer._credentials.get_frozen_credentials
        self._credentials()

    @classmethod
    def for_endpoint(cls, endpoint_url: str, bucket: str, *, region: str, keys: Keys, clock=time.time) -> QuerySigner:  # noqa: ANN001
        """A signer for `bucket` behind the S3-compatible `endpoint_url`, path-style (see
        module), with `keys`; no botocore client is built. ValueError for an endpoint that
        is not an http(s) URL."""
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not an S3 endpoint URL: {endpoint_url!r}")
        signer = cls.__new__(cls)
        signer.client, signer.bucket, signer.clock = None, bucket, clock
        signer.region, signer.service = region, "s3"
        default_port = {"http": ":80", "https": ":443"}[parts.scheme]
        # the Host header http.client sends (and botocore signs) leaves a default port out
        signer.origin, signer.host = f"{parts.scheme}://{parts.netloc}", parts.netloc.removesuffix(default_port)
        signer.base_path = f"{parts.path.rstrip('/')}/{quote(bucket, safe='-_.~')}/"
        signer._keys = {}
        signer._credentials = lambda: keys
        return signer

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._keys = {(secret, day): key}  # one day's key; a new day or new secret replaces it
        return key

    def url(self, method: str, key: str, *, expires_in: int, params: Mapping[str, str] | None = None,
            headers: Mapping[str, str] | None = None) -> str:
        """A URL for `method` on `key`, valid `expires_in` seconds; the client must send
        `headers` exactly (each is signed), and `params` are part of the request."""
        credentials = self._credentials()
        second = int(self.clock())
        stamp = getattr(self, "_stamp", None)
        if stamp is None or stamp[0] != second:  # the date strings change once a second, not once a URL
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            stamp = self._stamp = (second, amz_date, amz_date[:8], f"{amz_date[:8]}/{self.region}/{self.service}/aws4_request")
        _, amz_date, day, scope = stamp
        signed = {"host": self.host, **{name.lower(): " ".join(value.split()) for name, value in (headers or {}).items()}}
        signed_names = ";".join(sorted(signed))
        query = {
            **(params or {}),
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{credentials.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_in),
            "X-Amz-SignedHeaders": signed_names,
        }
        if credentials.token:
            query["X-Amz-Security-Token"] = credentials.token
        canonical_query = "&".join(
            f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted((str(k), str(v)) for k, v in query.items())
        )
        path = self.base_path + quote(key, safe="-_.~/")
        canonical_request = "\n".join([
            method, path, canonical_query,
            "".join(f"{name}:{signed[name]}\n" for name in sorted(signed)), signed_names, "UNSIGNED-PAYLOAD",
        ])
        string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
        signature = hmac.digest(self._signing_key(credentials.secret_key, day), string_to_sign.encode(), "sha256").hex()
        return f"{self.origin}{path}?{canonical_query}&X-Amz-Signature={signature}"


__all__ = ["Keys", "QuerySigner"]
