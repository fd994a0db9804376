"""S3RangeReads against a loopback HTTP server that misbehaves on purpose: every wrong
answer to a ranged GET is refused, never returned as data."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from storage_core.errors import PreconditionFailed, RangeNotHonoured, StorageError, StorageUnavailable
from storage_core.stores.presign import Keys, QuerySigner
from storage_core.stores.s3_reads import S3RangeReads

OBJECT = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        behaviour = self.server.behaviour  # type: ignore[attr-defined]
        asked = self.headers["Range"].removeprefix("bytes=")
        first_text, last_text = asked.split("-")
        if first_text == "":  # a suffix
            first, last = max(0, len(OBJECT) - int(last_text)), len(OBJECT) - 1
        else:
            first, last = int(first_text), min(int(last_text), len(OBJECT) - 1)
        status, etag = 206, '"v1"'
        if behaviour == "ignore-range":
            first, last, status = 0, len(OBJECT) - 1, 200
        elif behaviour == "other-range":
            first += 1
        elif behaviour == "new-version":
            etag = '"v2"'
        elif behaviour == "refused":
            body = b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = OBJECT[first:last + 1]
        length = len(body) + (10 if behaviour == "too-long" else 0)
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(OBJECT)}")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.end_headers()
        try:
            self.wfile.write(body + b"x" * (length - len(body)))
        except OSError:
            pass  # the reader hung up: it did not want the rest

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def reads() -> Iterator[tuple[ThreadingHTTPServer, S3RangeReads]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.behaviour = "good"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    signer = QuerySigner.for_endpoint(f"http://127.0.0.1:{httpd.server_address[1]}", "b", region="us-east-1",
                                      keys=Keys("k", "s"))
    yield httpd, S3RangeReads("b", signer)
    httpd.shutdown()
    httpd.server_close()


def test_good_answers_are_the_object_s_bytes(reads) -> None:  # noqa: ANN001
    _, store = reads
    tail = store.get_tail("k", 100)
    assert (tail.data, tail.start, tail.size, tail.etag) == (OBJECT[-100:], len(OBJECT) - 100, len(OBJECT), '"v1"')
    assert store.get_range("k", 10, 5000, if_match='"v1"') == OBJECT[10:5000]


@pytest.mark.parametrize(("behaviour", "error"), [
    ("ignore-range", RangeNotHonoured),
    ("other-range", RangeNotHonoured),
    ("too-long", StorageUnavailable),
    ("new-version", PreconditionFailed),
    ("refused", StorageUnavailable),
])
def test_a_wrong_answer_is_refused(reads, behaviour, error) -> None:  # noqa: ANN001
    httpd, store = reads
    httpd.behaviour = behaviour
    with pytest.raises(error) as raised:
        store.get_range("k", 10, 5000, if_match='"v1"')
    assert isinstance(raised.value, StorageError)
    httpd.behaviour = "good"
    assert store.get_range("k", 0, 10) == OBJECT[:10]  # the next request still gets a usable connection
