"""storage_core.stores.presign against botocore: the same request signed at the same instant
gives the same URL (as a set of query parameters), for path-style and virtual-host
clients, temporary credentials and keys that need escaping. (The integration tests send
these URLs to SeaweedFS, which checks the signatures.)"""

from __future__ import annotations

import calendar
import time
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from storage_core.stores.presign import Keys, QuerySigner

KEYS = ["lake/cam-1/run 1/a.mcap", "lake/dev/ünï/çode+plus=eq&amp.bin", "k~tilde/(paren)/*star*/!bang'", "a/b%25c"]


def client(endpoint: str | None, token: str | None = None):  # noqa: ANN201
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="eu-west-3", aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"} if endpoint else {}),
    )


def parsed(url: str) -> tuple[str, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return parts.netloc, parts.path, parse_qs(parts.query, keep_blank_values=True)


def same_instant(reference: str) -> float:
    stamp = parse_qs(urlsplit(reference).query)["X-Amz-Date"][0]
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", None], ids=["path-style", "virtual-host"])
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLE//token=="], ids=["keys", "session-token"])
@pytest.mark.parametrize("key", KEYS)
def test_put_and_part_urls_match_botocore(endpoint, token, key):
    s3 = client(endpoint, token)
    checksum = {"x-amz-checksum-crc32c": "AAAABQ=="}
    for operation, extra, query in [
        ("put_object", {}, {}),
        ("upload_part", {"UploadId": "up/load+id==", "PartNumber": 7}, {"uploadId": "up/load+id==", "partNumber": "7"}),
    ]:
        reference = s3.generate_presigned_url(
            operation, Params={"Bucket": "fleet-data", "Key": key, "ChecksumCRC32C": "AAAABQ==", **extra}, ExpiresIn=900
        )
        signer = QuerySigner(s3, "fleet-data", clock=lambda ref=reference: same_instant(ref))
        ours = signer.url("PUT", key, expires_in=900, params=query, headers=checksum)
        assert parsed(ours) == parsed(reference), operation


def test_a_url_without_signed_headers_matches_botocore():
    s3 = client("http://127.0.0.1:8333")
    reference = s3.generate_presigned_url("put_object", Params={"Bucket": "b-1", "Key": "x/y.bin"}, ExpiresIn=60)
    signer = QuerySigner(s3, "b-1", clock=lambda: same_instant(reference))
    assert parsed(signer.url("PUT", "x/y.bin", expires_in=60)) == parsed(reference)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.org:443/base/", "http://seaweed:80"])
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLE//token=="], ids=["keys", "session-token"])
@pytest.mark.parametrize("key", KEYS)
def test_a_signer_without_a_client_matches_botocore_path_style(endpoint, token, key):
    s3 = client(endpoint, token)
    reference = s3.generate_presigned_url("get_object", Params={"Bucket": "fleet-data", "Key": key}, ExpiresIn=300)
    keys = Keys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = QuerySigner.for_endpoint(endpoint, "fleet-data", region="eu-west-3", keys=keys,
                                      clock=lambda: same_instant(reference))
    assert parsed(signer.url("GET", key, expires_in=300)) == parsed(reference)


@pytest.mark.parametrize("endpoint", ["s3.example.org", "ftp://host", "http://host/?x=1"])
def test_a_signer_refuses_what_is_not_an_endpoint_url(endpoint):
    with pytest.raises(ValueError, match="not an S3 endpoint URL"):
        QuerySigner.for_endpoint(endpoint, "b-1", region="us-east-1", keys=Keys("a", "b"))
