"""`ferry device-upload` as a device runs it: only the gateway's HTTP API, bytes straight
to the presigned URLs, and a resume that sends only what the store does not hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flows.gateway.client import STATE_FILE, device_upload
from storage_core.catalog.queries import list_objects

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
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=full_env,
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
    assert [e.id for e in gateway.emitter.events] == [report.event_id]
    # identical bytes already stored: a new transaction that stores nothing
    again = device_upload(folder, gateway=gateway.url, token=gateway.token, part_size=5 * MiB)
    assert again.pieces_sent == 0 and again.files == 0
    assert len(list_objects(gateway.catalog)) == 2


def test_device_upload_resumes_after_the_process_is_killed(gateway, tmp_path):
    folder = tmp_path / "landing"
    big = write(folder / "run-1" / "big.bin", 20 * MiB + 7)  # 5 parts of 5 MiB
    args = ["device-upload", str(folder), "--gateway", gateway.url, "--part-size", str(5 * MiB), "--json"]
    env = {"FERRY_DEVICE_TOKEN": gateway.token, "FERRY_HOME": str(tmp_path / "home")}
    child = ferry(*args, "--limit-rate", str(6 * MiB), cwd=tmp_path, env=env)
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
        present = http.get(f"/v1/uploads/{txn}").json()["files"][0]["parts_present"]
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
    assert gateway.store.list_multipart_uploads() == [] and len(gateway.emitter.events) == 1


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
