"""The bulk paths of S3Store against SeaweedFS (access keys on): URLs signed by
storage_core.stores.presign are accepted with the declared bytes and refused with others;
`delete_many` removes keys a thousand a request; `find_objects` sees what a LIST sees."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from storage_core.checksums import crc32c, to_header
from storage_core.stores.lookup import find_objects


def test_bulk_signed_urls_store_the_declared_bytes_and_refuse_others(bucket):
    good, bad = b"declared bytes", b"other bytes!!"
    urls = [bucket.presign_put(f"d/r/{n}.bin", expires_in=300, crc32c=crc32c(good)) for n in range(3)]
    headers = {"x-amz-checksum-crc32c": to_header(crc32c(good))}
    assert [httpx.put(u, content=good, headers=headers).status_code for u in urls[:2]] == [200, 200]
    assert httpx.put(urls[2], content=bad, headers=headers).status_code >= 400
    assert httpx.put(urls[2], content=good, headers={"x-amz-checksum-crc32c": to_header(crc32c(bad))}).status_code == 403
    assert sorted(o.key for o in bucket.list("d/")) == ["d/r/0.bin", "d/r/1.bin"]

    upload_id = bucket.create_multipart("d/r/big.bin")
    part = b"p" * 1000
    url = bucket.presign_upload_part("d/r/big.bin", upload_id, 1, expires_in=300, crc32c=crc32c(part))
    assert httpx.put(url, content=part, headers={"x-amz-checksum-crc32c": to_header(crc32c(part))}).status_code == 200
    assert [p.size for p in bucket.list_parts("d/r/big.bin", upload_id)] == [1000]
    bucket.abort_multipart("d/r/big.bin", upload_id)


def test_delete_many_and_find_objects(bucket):
    keys = [f"run/seg/{n:05d}" for n in range(1001)]  # two DeleteObjects requests
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: bucket.put(k, b"x", size=1), keys))
    bucket.put("run/keep", b"keep", size=4)
    found = find_objects(bucket, [*keys[:10], "run/seg/absent"])
    assert sorted(found) == keys[:10] and found[keys[0]].size == 1
    bucket.delete_many([*keys, "run/seg/absent"])  # a missing key is no error
    assert [o.key for o in bucket.list("run/")] == ["run/keep"]
