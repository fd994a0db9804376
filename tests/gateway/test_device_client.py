"""`ferry device-upload` as a device runs it: only the gateway's HTTP API, bytes straight
to the presigned URLs, and a resume that sends only what the store does not hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from storage_core.device import client as client_module
from storage_core.device.client import STATE_FILE, device_upload
from storage_core.errors import GatewayError
from storage_core.catalog.queries import list_objects
from storage_core.errors import ConfigError
from tests.gateway.test_gateway import wait_for_events

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, size: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def ferry(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", *args], cwd=cwd, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def test_device_upload_stores_a_folder_and_a_rerun_sends_nothing(gateway, tmp_path):
    folder = tmp_path / "landing"
    small = write(folder / "run-1" / "meta.json", 2_000)
    big = write(folder / "run-1" / "cam" / "front.mp4", 12 * MiB + 5)
    report = device_upload(folder, gateway=gateway.url, token=gateway.token, part_size=5 * MiB)
    assert report.status == "completed" and report.files == 2 and report.pieces_sent == 4 and report.pieces_reused == 0
    assert gateway.store.get_range("lake/cam-1/run-1/cam/front.mp4", 0, len(big)) == big
    assert gateway.store.get_range("lake/cam-1/run-1/meta.json", 0, len(small)) == small
    assert not (folder / STATE_FILE).exists() and gateway.store.list_multipart_uploads() == []
    assert [e.id for e in wait_for_events(gateway.emitter, 1)] == [report.event_id]
    # identical bytes already stored: a new transaction that stores nothing
    again = device_upload(folder, gateway=gateway.url, token=gateway.token, part_size=5 * MiB)
    assert again.pieces_sent == 0 and again.files == 0
    assert len(list_objects(gateway.catalog)) == 2


def test_device_upload_puts_parts_in_parallel(gateway, tmp_path, monkeypatch):
    folder = tmp_path / "landing"
    big = write(folder / "run-1" / "big.bin", 15 * MiB + 3)  # 4 parts of 5 MiB
    both_in_flight = threading.Barrier(2, timeout=20)  # broken (and the upload fails) unless 2 PUTs overlap
    calls: list[int] = []
    put = client_module._put

    def meeting(http, url, *args):
        calls.append(url["part_number"])
        if len(calls) <= 2:
            both_in_flight.wait()
        return put(http, url, *args)

    monkeypatch.setattr(client_module, "_put", meeting)
    report = device_upload(folder, gateway=gateway.url, token=gateway.token, part_size=5 * MiB, parallel=3)
    assert report.status == "completed" and report.pieces_sent == 4 and report.bytes_sent == len(big)
    assert sorted(calls) == [1, 2, 3, 4]
    assert gateway.store.get_range("lake/cam-1/run-1/big.bin", 0, len(big)) == big


def test_one_failed_put_stops_the_others_and_the_retry_sends_only_what_is_missing(gateway, tmp_path, monkeypatch):
    folder = tmp_path / "landing"
    big = write(folder / "run-1" / "big.bin", 20 * MiB + 1)  # 5 parts of 5 MiB
    tried: list[int] = []
    stored: list[int] = []
    put = client_module._put

    def part_3_fails_once(http, url, *args):
        tried.append(url["part_number"])
        if url["part_number"] == 3 and tried.count(3) == 1:
            raise GatewayError("connection lost (injected)", retryable=True)
        put(http, url, *args)
        stored.append(url["part_number"])

    monkeypatch.setattr(client_module, "_put", part_3_fails_once)
    report = device_upload(folder, gateway=gateway.url, token=gateway.token, part_size=5 * MiB, parallel=2)
    assert report.status == "completed" and tried.count(3) == 2
    assert sorted(stored) == [1, 2, 3, 4, 5]  # no part stored twice: the retry asked what was missing
    assert report.pieces_sent == 5 and report.bytes_sent == len(big)
    assert gateway.store.get_range("lake/cam-1/run-1/big.bin", 0, len(big)) == big
    assert gateway.store.list_multipart_uploads() == [] and not (folder / STATE_FILE).exists()


def test_parallel_below_one_is_refused(gateway, tmp_path):
    write(tmp_path / "landing" / "run-1" / "a.bin", 10)
    with pytest.raises(ConfigError, match="parallel must be at least 1"):
        device_upload(tmp_path / "landing", gateway=gateway.url, token=gateway.token, parallel=0)


@pytest.mark.slow  # kills a `ferry device-upload` process mid-transfer, then reruns it
def test_device_upload_resumes_after_the_process_is_killed(gateway, tmp_path):
    folder = tmp_path / "landing"
    big = write(folder / "run-1" / "big.bin", 20 * MiB + 7)  # 5 parts of 5 MiB
    args = ["device-upload", str(folder), "--gateway", gateway.url, "--part-size", str(5 * MiB), "--json"]
    env = {"FERRY_DEVICE_TOKEN": gateway.token, "FERRY_HOME": str(tmp_path / "home")}
    # one part at a time: parts in flight together share the rate and end together, leaving
    # no moment with some of them stored and the upload not yet finished
    child = ferry(*args, "--limit-rate", str(6 * MiB), "--parallel", "1", cwd=tmp_path, env=env)
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.token}"})
    try:
        deadline = time.monotonic() + 60
        while True:  # kill it once a part is in the store and before the last one is
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no part was stored in time"
            if (folder / STATE_FILE).exists():
                txn = json.loads((folder / STATE_FILE).read_text())["transaction_id"]
                status = http.get(f"/v1/uploads/{txn}")
                if status.status_code == 200 and status.json()["files"][0]["parts_present"]:
                    break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        # a part whose whole body was sent before the kill is still being stored: wait until
        # what the server holds stops changing (seen: 1 part present just after the kill, 3 a moment later)
        present, deadline = None, time.monotonic() + 30
        while (now := http.get(f"/v1/uploads/{txn}").json()["files"][0]["parts_present"]) != present:
            assert time.monotonic() < deadline, "the parts present kept changing after the kill"
            present = now
            time.sleep(1.0)
        assert 1 <= len(present) < 5
    finally:
        if child.poll() is None:
            child.kill()
        http.close()

    rerun = ferry(*args, cwd=tmp_path, env=env)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["transaction_id"] == txn and report["status"] == "completed"
    assert report["pieces_reused"] == len(present) and report["pieces_sent"] == 5 - len(present)
    assert gateway.store.get_range("lake/cam-1/run-1/big.bin", 0, len(big)) == big
    assert gateway.store.list_multipart_uploads() == [] and len(wait_for_events(gateway.emitter, 1)) == 1


@pytest.mark.slow  # a dozen `ferry` subprocesses, each importing the CLI
def test_cli_devices_and_gateway_refusals(tmp_path, bucket):
    env = {"FERRY_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "FERRY_STORE": f"file://{tmp_path / 'store'}"}
    add = ferry("devices", "add", "cam-9", "--label", "bench", "--json", cwd=tmp_path, env=env)
    out, err = add.communicate(timeout=60)
    assert add.returncode == 0, err
    token = json.loads(out)["token"]
    listed = ferry("devices", "list", "--json", cwd=tmp_path, env=env)
    out, err = listed.communicate(timeout=60)
    [row] = json.loads(out)
    assert row["device_id"] == "cam-9" and row["label"] == "bench" and token not in out
    revoke = ferry("devices", "revoke", "cam-9", "--json", cwd=tmp_path, env=env)
    assert json.loads(revoke.communicate(timeout=60)[0])["revoked"] == [row["id"]]
    unknown = ferry("devices", "revoke", "nope", cwd=tmp_path, env=env)
    _, err = unknown.communicate(timeout=60)
    assert unknown.returncode == 1 and "no such device 'nope'" in err and len(err.strip().splitlines()) == 1

    gateway = ferry("gateway", "--port", "1", cwd=tmp_path, env=env)
    _, err = gateway.communicate(timeout=60)
    assert gateway.returncode == 1 and "needs a store that can presign URLs" in err and len(err.strip().splitlines()) == 1

    no_token = ferry("device-upload", str(tmp_path), "--gateway", "http://127.0.0.1:1", cwd=tmp_path,
                     env={**env, "FERRY_DEVICE_TOKEN": ""})
    _, err = no_token.communicate(timeout=60)
    assert no_token.returncode == 1 and "no device token" in err


# --- the client against answers that are not the gateway's, and plain http ----------------------


@pytest.fixture
def not_a_gateway():
    """A loopback HTTP server answering every request with `answer` = (status, content type, body)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = {"value": (200, "application/json", b"{}")}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, kind, body = answer["value"]
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _reply

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answer
    finally:
        server.shutdown()
        server.server_close()


def one_line_gateway_error(call) -> str:
    with pytest.raises(GatewayError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_answers_that_are_not_the_gateways_are_one_line_errors(not_a_gateway, tmp_path):
    from storage_core.device.client import GatewayClient

    url, answer = not_a_gateway
    client = GatewayClient(url, "ferry_dt_x")
    files = [{"path": "cam-1/r/a.bin", "size": 1, "crc32c": 0}]
    state = {"transaction_id": "t", "status": "uploading", "files": [
        {"path": "cam-1/r/other.bin", "multipart": False, "uploaded": False, "urls": []}]}
    cases = [
        ((200, "text/html", b"<html>\n<body>welcome</body>\n</html>"), client.me, "not a JSON object"),
        ((200, "application/json", b'{"hello": 1}'), client.me, "no device_id"),
        ((200, "application/json", b"[1, 2]"), lambda: client.status("t"), "not a JSON object"),
        ((200, "application/json", b'{"transaction_id": "t", "status": "x", "files": [{"path": "p"}]}'),
         lambda: client.status("t"), "file 'p' has no multipart, uploaded, urls"),
        ((200, "application/json", json.dumps({**state, "files": [{**state["files"][0], "urls": [{"url": "u"}]}]}).encode()),
         lambda: client.status("t"), "a URL without headers, part_number, size"),
        ((200, "application/json", json.dumps(state).encode()), lambda: client.begin(files, "t"),
         "a path this device did not declare: 'cam-1/r/other.bin'"),
        ((200, "application/json", b'{"status": "completed"}'), lambda: client.complete("t"), "no files, bytes"),
        ((404, "text/html", b"<html>\nNot here\n</html>"), client.me, "gateway refused (404): <html>"),
        ((502, "application/json", b'{"detail": ["a", "list"]}'), client.me, "gateway refused (502)"),
    ]
    try:
        for value, call, expected in cases:
            answer["value"] = value
            assert expected in one_line_gateway_error(call)
    finally:
        client.close()
    # the whole command, pointed at something that is not a gateway
    write(tmp_path / "landing" / "run-1" / "a.bin", 10)
    answer["value"] = (200, "text/html", b"<html>a web page</html>")
    assert "unexpected answer from the gateway" in one_line_gateway_error(
        lambda: device_upload(tmp_path / "landing", gateway=url, token="ferry_dt_x")
    )


def test_the_stream_client_reads_answers_as_the_upload_client_does(not_a_gateway):
    """One client core (storage_core.device.http): the same one-line errors and retry flags,
    plus the stream's own refusals as their StreamRefused class."""
    from storage_core.device.stream import StreamClient
    from storage_core.errors import AppendOutOfRange, StaleEpoch

    url, answer = not_a_gateway
    client = StreamClient(url, "ferry_dt_x")
    try:
        refusal = {"detail": "beyond the end\nmore", "reason": "out_of_range", "committed_end": 7, "epoch": 2}
        answer["value"] = (409, "application/json", json.dumps(refusal).encode())
        with pytest.raises(AppendOutOfRange) as caught:
            client.append("cam-1", "imu", b"frame")
        assert (str(caught.value), caught.value.committed_end, caught.value.epoch) == ("beyond the end", 7, 2)
        answer["value"] = (409, "application/json", json.dumps({**refusal, "reason": "stale_epoch"}).encode())
        with pytest.raises(StaleEpoch):
            client.append("cam-1", "imu", b"frame")
        cases = [  # (status, content type, body), the call, the message holds, retryable
            ((200, "text/html", b"<html>\n<body>welcome</body>\n</html>"), client.me, "not a JSON object", False),
            ((200, "application/json", b'{"hello": 1}'), client.list, "no streams", False),
            ((502, "text/html", b"<html>\nBad gateway\n</html>"), client.me, "gateway refused (502): <html>", True),
            ((409, "application/json", b'{"detail": "no", "reason": "other"}'), client.me, "gateway refused (409): no", False),
            ((404, "application/json", json.dumps({"detail": "no such stream\nat all"}).encode()),
             lambda: list(client.read("cam-1", "imu")), "gateway refused (404): no such stream", False),
        ]
        for value, call, expected, retryable in cases:
            answer["value"] = value
            assert expected in one_line_gateway_error(call)
            with pytest.raises(GatewayError) as caught:
                call()
            assert bool(caught.value.retryable) is retryable
    finally:
        client.close()


def test_a_token_over_plain_http_to_another_host_is_warned_about_once(caplog):
    from storage_core.device.client import GatewayClient

    with caplog.at_level("WARNING", logger="storage_core.device.http"):
        for url in ("http://127.0.0.1:8470", "http://localhost:8470", "http://[::1]:8470", "https://gw.example:8470"):
            GatewayClient(url, "ferry_dt_x").close()
        assert caplog.records == []
        for _ in range(3):
            GatewayClient("http://192.0.2.7:8470", "ferry_dt_x").close()
    [warning] = caplog.records
    assert "plain http" in warning.getMessage() and "192.0.2.7" in warning.getMessage()


def test_a_plain_http_gateway_client_parses_no_ca_bundle_and_an_https_one_verifies():
    """A client of an http:// gateway gets a TLS context that trusts nothing (never used);
    one of an https:// gateway keeps httpx's verifying default."""
    import ssl

    from storage_core.device.http import GatewayHttp

    plain = GatewayHttp("http://127.0.0.1:8470", "ferry_dt_x", timeout=5)
    secure = GatewayHttp("https://gw.example", "ferry_dt_x", timeout=5)
    try:
        def context(gateway: GatewayHttp) -> ssl.SSLContext:
            return gateway.http._transport._pool._ssl_context  # httpx 0.28's transport, one pool

        assert context(plain).cert_store_stats()["x509_ca"] == 0
        assert context(plain).verify_mode == ssl.CERT_REQUIRED and context(plain).check_hostname
        assert context(secure).cert_store_stats()["x509_ca"] > 0
        assert context(secure).verify_mode == ssl.CERT_REQUIRED
    finally:
        plain.close()
        secure.close()
