"""The gateway under hostile bodies, token guessing and a Prefect that hangs: `ferry gateway`
as a process (its memory is measured in /proc) or uvicorn in a thread, SeaweedFS, SQLite."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from ferry.gateway.app import FailedTokenLimit
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.catalog.outbox import pending_upload_events
from tests.gateway.test_gateway import refused, single, upload_all
from tests.support.gateway import gateway_process, running_gateway

MiB = 1024 * 1024


# --- helpers: raw HTTP, a prober -----------------------------------------------------------------


@dataclass
class Prober:
    """Asks /healthz every 50 ms in a thread; records each answer's time (s) and failures."""

    url: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(0.05):
                start = time.monotonic()
                try:
                    ok = http.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError as exc:
                    ok = False
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - start)
                if not ok and not self.failures:
                    self.failures.append("not 200")

    @contextmanager
    def running(self) -> Iterator[Prober]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=15)


def junk_chunks(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """`total` bytes of junk, generated as they are sent (one chunk in memory)."""
    block = os.urandom(chunk)
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def post_junk(url: str, total: int, *, token: str | None = None, chunked: bool = True) -> tuple[int | None, int]:
    """POST `total` bytes of junk to /v1/uploads over a raw socket, chunked or with a
    Content-Length, stopping when the gateway answers or closes. Returns (HTTP status or
    None when the connection died before an answer could be read, body bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    headers = [f"POST /v1/uploads HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    headers.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    if token:
        headers.append(f"Authorization: Bearer {token}")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sent, answer = 0, b""
    try:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        pieces, pending, finished = junk_chunks(total), b"", False
        while True:
            readable, writable, _ = select.select([sock], [sock] if pending or not finished else [], [], 30)
            if readable:
                break
            if not writable:
                raise AssertionError("the gateway neither read nor answered for 30 s")
            if not pending:
                piece = next(pieces, None)
                if piece is None:
                    finished = True
                    pending = b"0\r\n\r\n" if chunked else b""
                else:
                    sent += len(piece)
                    pending = (b"%x\r\n%s\r\n" % (len(piece), piece)) if chunked else piece
            try:
                pending = pending[sock.send(pending):] if pending else b""
            except (BrokenPipeError, ConnectionResetError):
                break
        try:
            while b"\r\n" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except (ConnectionResetError, TimeoutError):
            pass
    finally:
        sock.close()
    status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent


# --- 4: bodies are counted as they arrive, after the token -----------------------------------


@pytest.mark.slow  # offers 4 × 600 MB to a gateway process and samples its memory
def test_600_mb_of_junk_does_not_grow_the_gateway_and_healthz_keeps_answering(tmp_path, bucket, sqlite_url):
    token = add_device_token(Catalog(sqlite_url), "cam-1").token
    total = 600 * 1000 * 1000
    with gateway_process(tmp_path, store_uri=f"s3://{bucket.bucket}/lake", catalog_url=sqlite_url) as gw, Prober(gw.url).running() as probe:
        time.sleep(0.5)
        before = gw.memory()
        results = {
            "chunked, no token": post_junk(gw.url, total),
            "content-length, no token": post_junk(gw.url, total, chunked=False),
            "chunked, valid token": post_junk(gw.url, total, token=token),
            "content-length, valid token": post_junk(gw.url, total, token=token, chunked=False),
        }
        after = gw.memory()
        assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
    grown = after["VmHWM"] - before["VmRSS"]
    print(f"\nRSS before {before['VmRSS'] / MiB:.1f} MiB, peak after {after['VmHWM'] / MiB:.1f} MiB"
          f" (+{grown / MiB:.1f} MiB); /healthz max {max(probe.latencies):.3f} s over {len(probe.latencies)} probes")
    for what, (status, sent) in results.items():
        print(f"{what}: {status}, {sent / MiB:.1f} MiB sent before the gateway answered")
    assert results["chunked, no token"][0] in (401, None) and results["content-length, no token"][0] in (401, None)
    assert results["chunked, valid token"][0] in (413, None) and results["content-length, valid token"][0] in (413, None)
    assert any(status is not None for status, _ in results.values())  # the answers were read, not just a closed socket
    assert all(sent < 100 * MiB for _, sent in results.values())  # the gateway stopped reading early
    assert grown < 64 * MiB
    assert probe.failures == [] and max(probe.latencies) < 5


def test_no_token_is_refused_before_the_body_and_a_token_holder_is_cut_at_the_limit(gateway_factory):
    catalog, _emitter, app = gateway_factory(max_body_bytes=64 * 1024)
    token = add_device_token(catalog, "cam-1").token
    with running_gateway(app) as url:
        status, sent = post_junk(url, 50 * MiB)
        assert status == 401 and sent < 20 * MiB  # answered at the headers; the rest never read
        status, sent = post_junk(url, 50 * MiB, token=token)
        assert status == 413 and sent < 20 * MiB
        status, sent = post_junk(url, 50 * MiB, token=token, chunked=False)
        assert status == 413 and sent < 20 * MiB
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            manifest = {"files": [single(f"cam-1/r/{'x' * 1000}{n}", b"a") for n in range(5)]}
            manifest["files"][0]["path"] = "cam-1/r/" + "y" * 70_000  # over the body limit by itself
            refused(http.post("/v1/uploads", json=manifest), 413, "request body over 65536 bytes")
            refused(http.post("/v1/uploads", content=b'{"files": 1' + b" " * 70_000 + b"}",
                              headers={"content-type": "application/json"}), 413, "request body over")
            refused(http.post("/v1/uploads", content=b"{", headers={"content-type": "application/json"}), 422, "malformed")
            refused(http.post("/v1/uploads", json={"files": "x"}), 422, "malformed request: files")
            assert http.get("/v1/me").json() == {"device_id": "cam-1"}  # the connection pool still serves


# --- finding 10: tokens, foreign transaction ids, internal endpoints --------------------------------


def test_failed_tokens_are_rate_limited_per_address(gateway_factory):
    catalog, _emitter, app = gateway_factory(failed_tokens=FailedTokenLimit(failures=3, window=60))
    token = add_device_token(catalog, "cam-1").token
    with running_gateway(app) as url:
        for guess in ("ferry_dt_a", "ferry_dt_b", "nonsense"):
            refused(httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {guess}"}), 401, "invalid or revoked")
        blocked = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {token}"})
        refused(blocked, 429, "too many refused device tokens from 127.0.0.1")
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        refused(httpx.post(f"{url}/v1/uploads", content=b"x" * 1000, headers={"Authorization": "Bearer ferry_dt_c"}),
                429, "too many refused")  # no further guess is even looked at
        assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.parametrize("trusted", [False, True], ids=["no-proxy-trusted", "proxy-trusted"])
def test_a_forwarded_address_counts_only_from_a_trusted_proxy(tmp_path, bucket, sqlite_url, trusted, monkeypatch):
    """By default X-Forwarded-For is not believed, so a guesser on loopback cannot name a new
    address per try; with `--forwarded-allow-ips`, the proxy's header names the device."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)  # uvicorn alone would trust loopback's header
    args = ("--forwarded-allow-ips", "127.0.0.1") if trusted else ()
    with gateway_process(tmp_path, store_uri=f"s3://{bucket.bucket}/lake", catalog_url=sqlite_url, args=args) as gw:
        for n in range(20):
            forged = {"Authorization": f"Bearer ferry_dt_guess{n}", "X-Forwarded-For": f"10.0.{n}.1"}
            refused(httpx.get(f"{gw.url}/v1/me", headers=forged), 401, "invalid or revoked")
        next_guess = httpx.get(f"{gw.url}/v1/me", headers={"Authorization": "Bearer ferry_dt_x", "X-Forwarded-For": "10.0.0.1"})
        if trusted:  # 10.0.0.1 has one refusal so far: its own limit is far
            refused(next_guess, 401, "invalid or revoked")
        else:  # every guess came from 127.0.0.1, whatever the header said
            refused(next_guess, 429, "too many refused device tokens from 127.0.0.1")


def test_failed_token_window_slides():
    from ferry.gateway.guard import FailedTokens

    now = [0.0]
    window = FailedTokens(FailedTokenLimit(failures=2, window=10), clock=lambda: now[0], max_addresses=3)
    window.failed("a")
    now[0] = 4
    window.failed("a")
    assert window.retry_after("a") == 6 and window.retry_after("b") is None
    now[0] = 10.5
    assert window.retry_after("a") is None  # the first failure has left the window
    for address in ("b", "c", "d", "e"):
        window.failed(address)
    assert len(window._seen) <= 3  # bounded however many addresses fail


# a transaction id another device holds: tests/gateway/test_gateway_keys_and_ids.py


def test_a_store_outage_is_a_503_that_does_not_name_the_endpoint(gateway_factory, monkeypatch, s3_env):
    from storage_core.errors import StorageUnavailable

    catalog, _emitter, app = gateway_factory()
    token = add_device_token(catalog, "cam-1").token

    def unavailable(*args, **kwargs):
        raise StorageUnavailable(f"object store at {s3_env.endpoint} unavailable: connection refused")

    monkeypatch.setattr("ferry.gateway.app.device_upload_status", unavailable)
    with running_gateway(app) as url:
        answer = httpx.get(f"{url}/v1/uploads/{'a' * 32}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.json() == {"detail": "the object store is unavailable; retry later"}
    assert s3_env.endpoint not in answer.text


# --- 5: a hanging Prefect costs the flusher, not the devices ------------------------------------


class FakePrefect:
    """A loopback HTTP server for the events API: while `hanging`, it accepts connections,
    reads the request and never answers; otherwise it records each POSTed body and answers
    200. Released hanging connections are closed unanswered (the event was not delivered)."""

    def __init__(self, *, hanging: bool = True, answer_after: float = 0.0) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/api"
        self.answer_after = answer_after  # seconds between recording a body and answering it
        self.hanging = threading.Event()
        if hanging:
            self.hanging.set()
        self.received: list[list[dict]] = []
        self.hung = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                conn.close()
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += conn.recv(65536)
        if self.hanging.is_set():
            self.hung += 1
            self._held.append(conn)
            return
        self.received.append(json.loads(body))
        time.sleep(self.answer_after)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:  # the sender gave up waiting
            pass
        conn.close()

    def come_back(self) -> None:
        self.hanging.clear()
        for conn in self._held:
            conn.close()

    def close(self) -> None:
        self.come_back()
        self.server.close()


@pytest.mark.slow  # Prefect hangs for a few 5 s emit timeouts, then comes back
def test_a_hanging_prefect_delays_events_not_devices_and_each_is_delivered_once(tmp_path, bucket, sqlite_url):
    prefect = FakePrefect()
    catalog = Catalog(sqlite_url)
    tokens = {d: add_device_token(catalog, d).token for d in ("cam-1", "cam-2", "cam-3")}
    try:
        with gateway_process(tmp_path, store_uri=f"s3://{bucket.bucket}/lake", catalog_url=sqlite_url,
                             PREFECT_API_URL=prefect.url) as gw, \
                Prober(gw.url).running() as probe:
            answers, took = {}, []
            for device, token in tokens.items():
                with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                    data = os.urandom(1000)
                    state = http.post("/v1/uploads", json={"files": [single(f"{device}/r/a.bin", data)]}).json()
                    upload_all(state, {f"{device}/r/a.bin": data})
                    start = time.monotonic()
                    answers[device] = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()
                    took.append(time.monotonic() - start)
            deadline = time.monotonic() + 30
            while prefect.hung == 0:  # the flusher is stuck on Prefect now
                assert time.monotonic() < deadline, "the flusher never sent to Prefect"
                time.sleep(0.05)

            def replay(device: str) -> float:  # 45 replayed completes at once, as in the finding
                start = time.monotonic()
                with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {tokens[device]}"}, timeout=30) as h:
                    assert h.post(f"/v1/uploads/{answers[device]['transaction_id']}/complete").status_code == 200
                return time.monotonic() - start

            with ThreadPoolExecutor(45) as pool:
                replays = list(pool.map(replay, [d for d in tokens for _ in range(15)]))
            hanging_probes = list(probe.latencies)
            prefect.come_back()
            deadline = time.monotonic() + 60
            while pending_upload_events(catalog):
                assert time.monotonic() < deadline, "events still pending after Prefect came back"
                time.sleep(0.1)
            time.sleep(2.5)  # two more flusher rounds: nothing may be sent again
    finally:
        prefect.close()
    print(f"\ncompletes with Prefect hanging: max {max(took):.3f} s; 45 replayed completes: max {max(replays):.3f} s;"
          f" /healthz meanwhile: max {max(hanging_probes):.3f} s over {len(hanging_probes)} probes;"
          f" hung POSTs {prefect.hung}")
    assert all(a["status"] == "completed" for a in answers.values())
    assert max(took) < 5 and max(hanging_probes) < 5 and probe.failures == []
    # the burst's time is the catalog's (45 requests on a few threads and one SQLite file;
    # the same without Prefect hanging), none of it waits on Prefect
    assert max(replays) < 30
    delivered = [event["id"] for body in prefect.received for event in body]
    assert sorted(delivered) == sorted(a["event_id"] for a in answers.values())  # each once, with its durable id
    by_id = {event["id"]: event for body in prefect.received for event in body}
    for device, answer in answers.items():
        event = by_id[answer["event_id"]]
        assert event["event"] == "ferry.upload.completed" and event["resource"]["ferry.device.id"] == device


def test_complete_does_not_wait_for_a_hanging_prefect(gateway_factory):
    """The fast variant of the one above: the gateway in a thread, the real emitter with
    1 s timeouts, Prefect hanging for one complete, then back."""
    with _gateway_emitting_to(FakePrefect(), gateway_factory, timeout=1, answer_timeout=1) as (prefect, catalog, http):
        state = _one_file_uploaded(http)
        start = time.monotonic()
        done = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()
        took = time.monotonic() - start
        deadline = time.monotonic() + 10
        while prefect.hung == 0:
            assert time.monotonic() < deadline, "the flusher never sent to Prefect"
            time.sleep(0.02)
        start = time.monotonic()
        assert http.get("/healthz").status_code == 200
        assert http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()["event_emitted"] is False
        replay_took = time.monotonic() - start
        prefect.come_back()
        _wait_emitted(catalog, "the event was not delivered once Prefect came back")
        time.sleep(0.5)  # more flusher rounds: nothing is sent again
    assert done["status"] == "completed" and took < 5 and replay_took < 5
    assert [event["id"] for body in prefect.received for event in body] == [done["event_id"]]


def test_a_prefect_slow_to_answer_is_waited_for_not_sent_the_event_again(gateway_factory):
    """A busy Prefect answers after the connect timeout: the emitter waits for the answer
    (its own, longer bound) instead of giving up and sending the event a second time."""
    slow = FakePrefect(hanging=False, answer_after=1.5)
    with _gateway_emitting_to(slow, gateway_factory, timeout=0.5, answer_timeout=10) as (prefect, catalog, http):
        state = _one_file_uploaded(http)
        done = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()
        _wait_emitted(catalog, "the event was never marked emitted")
        time.sleep(1.0)  # more flusher rounds: nothing is sent again
    assert [event["id"] for body in prefect.received for event in body] == [done["event_id"]]


@contextmanager
def _gateway_emitting_to(prefect: FakePrefect, gateway_factory, *, timeout: float,  # noqa: ANN001
                         answer_timeout: float) -> Iterator[tuple[FakePrefect, Catalog, httpx.Client]]:
    """A gateway in a thread whose real emitter sends to `prefect` (closed on exit, its
    received events kept), and a client of it with cam-1's token."""
    from ferry.gateway.events import PrefectEmitter

    try:
        catalog, _emitter, app = gateway_factory(
            emitter=PrefectEmitter(prefect.url, timeout=timeout, answer_timeout=answer_timeout), flush_interval=0.2)
        token = add_device_token(catalog, "cam-1").token
        with running_gateway(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            yield prefect, catalog, http
    finally:
        prefect.close()


def _one_file_uploaded(http: httpx.Client) -> dict:
    """A begun transaction of cam-1 with its one file uploaded, not completed: its state."""
    data = os.urandom(1000)
    state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
    upload_all(state, {"cam-1/r/a.bin": data})
    return state


def _wait_emitted(catalog: Catalog, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while pending_upload_events(catalog):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
