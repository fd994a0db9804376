"""`ferry` as a user runs it (subprocesses), against SeaweedFS, SQLite and the session's Prefect API."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage_core.catalog import Catalog
from storage_core.checksums import crc32c
from storage_core.catalog.transactions import list_transactions, transaction_progress
from tests.flows.conftest import MiB, run_ferry, write_landing

pytestmark = pytest.mark.slow  # `ferry` subprocesses and flows against a real Prefect API


def no_open_transactions(env) -> bool:
    return all(t.status in ("completed", "aborted") for t in list_transactions(Catalog(env["FERRY_DATABASE_URL"])))


def test_sigkill_mid_upload_then_resume_sends_only_missing_parts(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "in", {"robot/rec/big.mcap": 150 * MiB})
    env = {**ferry_env, "FERRY_MAX_CONCURRENCY": "1"}
    catalog = Catalog(env["FERRY_DATABASE_URL"])
    child = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", "ingest", str(source), "--to", f"s3://{bucket.bucket}", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            found = list_transactions(catalog) if Path(tmp_path / "catalog.db").exists() else []
            if found and transaction_progress(catalog, found[0].id).stored_bytes >= 3 * 5 * MiB:
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    [txn] = list_transactions(catalog)
    assert txn.status == "uploading"
    [item] = txn.items
    recorded = item.parts_stored
    assert recorded >= 3 and item.upload_id
    assert len(bucket.list_parts("robot/rec/big.mcap", item.upload_id)) >= recorded

    done = run_ferry(["transactions", "resume", txn.id, "--json"], env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "completed"
    assert report["parts_reused"] >= recorded and report["parts_reused"] + report["parts_sent"] == 30
    data = (source / "robot/rec/big.mcap").read_bytes()
    assert crc32c(bucket.get_range("robot/rec/big.mcap", 0, len(data))) == crc32c(data)
    [final] = list_transactions(catalog)
    assert final.items[0].crc32c == crc32c(data)
    assert bucket.list_multipart_uploads() == []


def test_reconcile_aborts_stale_transactions_and_orphans(ferry_env, bucket, tmp_path, monkeypatch):
    from storage_core.config import load_settings
    from storage_core.keys import parse_uri
    from storage_core.manifest import scan_source
    from storage_core.catalog.transactions import begin_transaction
    from storage_core.upload.transactions import upload_item

    source = write_landing(tmp_path / "in", {"robot/rec/big.bin": 12 * MiB})
    catalog = Catalog(ferry_env["FERRY_DATABASE_URL"])
    txn = begin_transaction(catalog, scan_source(source).entries, destination=parse_uri(f"s3://{bucket.bucket}"), origination="t")
    # a process that dies after two parts: the journal has the upload, nothing completes it
    import storage_core.upload.transactions as transactions
    from storage_core.errors import StorageUnavailable

    original = transactions._CatalogJournal.part_stored

    def die_after_two(self, part):
        original(self, part)
        if part.number == 2:
            raise StorageUnavailable("connection lost as the process died (simulated)")

    with monkeypatch.context() as patched, pytest.raises(StorageUnavailable):  # the fixtures' settings stay
        patched.setattr(transactions._CatalogJournal, "part_stored", die_after_two)
        upload_item(catalog, txn.items[0].id, settings=load_settings(max_concurrency=1))
    orphan = bucket.create_multipart("nobody/knows/this.bin")  # an upload no transaction records
    assert len(bucket.list_multipart_uploads()) == 2

    fresh = run_ferry(["reconcile", "--older-than", "60", "--json"], ferry_env)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["aborted"] == []  # not stale yet
    stale = run_ferry(["reconcile", "--older-than", "0", "--json"], ferry_env)
    assert stale.returncode == 0, stale.stderr
    report = json.loads(stale.stdout)
    assert report["aborted"] == [txn.id]
    assert any(orphan in line for line in report["orphans_aborted"])
    assert bucket.list_multipart_uploads() == []
    assert no_open_transactions(ferry_env)


def test_two_ingests_of_the_same_folder_store_each_file_once(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "in", {f"robot/rec/{n:02d}.bin": 3 * MiB for n in range(12)})
    args = [sys.executable, "-m", "ferry.cli", "ingest", str(source), "--to", f"s3://{bucket.bucket}", "--json"]
    cwd = Path(__file__).resolve().parents[2]
    children = [subprocess.Popen(args, env=ferry_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd) for _ in range(2)]
    outputs = [child.communicate(timeout=180) for child in children]
    assert [c.returncode for c in children] == [0, 0], [o[1].decode()[-500:] for o in outputs]
    reports = [json.loads(o[0]) for o in outputs]
    seen = [{k: r.get(k) for k in ("outcome", "files_stored", "files_skipped", "held_back", "transaction_id")}
            for r in reports]  # a rare failure here under load: say what each run did
    assert sum(r["files_stored"] for r in reports) == 12, seen
    assert sum(r["files_skipped"] for r in reports) == 12, seen
    assert len(list(bucket.list())) == 12 and bucket.list_multipart_uploads() == [], seen


def test_ingest_from_a_bucket_prefix(ferry_env, bucket, landing_bucket):
    payload = {"uploads/robot/rec/log.mcap": b"m" * (6 * MiB), "uploads/robot/rec/cam/0001.h264": b"v" * 1000}
    for key, data in payload.items():
        landing_bucket.put(key, data, size=len(data))
    args = ["ingest", f"s3://{landing_bucket.bucket}/uploads", "--to", f"s3://{bucket.bucket}/raw", "--json"]
    first, second = run_ferry(args, ferry_env), run_ferry(args, ferry_env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads(first.stdout)["files_stored"] == 2 and json.loads(second.stdout)["files_skipped"] == 2
    for key, data in payload.items():
        assert bucket.get_range(key.replace("uploads/", "raw/", 1), 0, len(data)) == data
    missing = run_ferry(["ingest", f"s3://{landing_bucket.bucket}/nothing-here"], ferry_env)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nothing to ingest in s3://" in missing.stderr


@pytest.mark.parametrize(
    "case",
    ["missing source", "empty folder", "unreadable file", "key with ..", "invalid URI", "wrong credentials", "no such bucket"],
)
def test_bad_input_is_one_clear_line_and_nonzero(case, ferry_env, bucket, tmp_path):
    env = dict(ferry_env)
    source = write_landing(tmp_path / "in", {"robot/rec/a.bin": 1000})
    to = f"s3://{bucket.bucket}"
    expected = {
        "missing source": "does not exist",
        "empty folder": "nothing to ingest",
        "unreadable file": "cannot be read",
        "key with ..": "'..'",
        "invalid URI": "invalid storage URI",
        "wrong credentials": "access denied",
        "no such bucket": "bucket 'no-such-bucket-here' does not exist",
    }[case]
    args = ["ingest", str(source), "--to", to]
    if case == "missing source":
        args[1] = str(tmp_path / "nope")
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "unreadable file":
        (source / "robot/rec/gone.bin").symlink_to(tmp_path / "deleted")
    elif case == "key with ..":
        args[3] = f"s3://{bucket.bucket}/a/../b"
    elif case == "invalid URI":
        args[3] = "ftp://server/x"
    elif case == "wrong credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "no such bucket":
        args[3] = "s3://no-such-bucket-here"
    result = run_ferry(args, env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert no_open_transactions(env)
    if case in ("missing source", "empty folder", "unreadable file", "no such bucket"):
        assert list_transactions(Catalog(env["FERRY_DATABASE_URL"])) == []  # refused before one began
    assert list(bucket.list()) == [] and bucket.list_multipart_uploads() == []


def test_a_recording_with_a_bad_file_is_held_back_the_others_ingested_and_the_run_exits_1(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "in", {"robot1/run1/a.bin": 1000, "robot2/run1/b.bin": 1000})
    (source / "robot1/run1/done.marker").touch()  # an empty file is a file like any other
    # root reads files whatever their mode, so a dangling link stands in for an unreadable file
    (source / "robot2/run1/gone.bin").symlink_to(tmp_path / "deleted")
    args = ["ingest", str(source), "--to", f"s3://{bucket.bucket}"]
    human = run_ferry(args, ferry_env)
    assert human.returncode == 1, human.stderr
    assert "completed with 1 recording(s) held back" in human.stdout
    held = [line for line in human.stderr.splitlines() if line.startswith("held back:")]
    assert held == [f"held back: robot2/run1: {source}/robot2/run1/gone.bin: cannot be read (No such file or directory)"]
    assert "Traceback" not in human.stderr
    assert sorted((m.key, m.size) for m in bucket.list()) == [("robot1/run1/a.bin", 1000), ("robot1/run1/done.marker", 0)]

    as_json = run_ferry([*args, "--json"], ferry_env)
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["outcome"] == "completed with 1 recording(s) held back" and len(report["held_back"]) == 1
    assert (report["files_stored"], report["files_skipped"]) == (0, 2)

    (source / "robot2/run1/gone.bin").unlink()  # the operator fixes the device's folder: the next run retries it
    fixed = run_ferry([*args, "--json"], ferry_env)
    assert fixed.returncode == 0, fixed.stderr
    report = json.loads(fixed.stdout)
    assert (report["outcome"], report["held_back"], report["files_stored"], report["files_skipped"]) == (
        "completed", [], 1, 2)
    assert no_open_transactions(ferry_env)


def test_reconcile_reports_a_destination_that_has_gone_and_exits_0(ferry_env, bucket, s3_env, tmp_path):
    from tests.conftest import _delete_bucket, _fresh_bucket

    doomed = next(_fresh_bucket(s3_env.endpoint))
    source = write_landing(tmp_path / "in", {"robot/rec/a.bin": 1000})
    assert run_ferry(["ingest", str(source), "--to", f"s3://{doomed.bucket}"], ferry_env).returncode == 0
    _delete_bucket(doomed.client, doomed.bucket)
    as_json = run_ferry(["reconcile", "--json"], ferry_env)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["failed"] == [] and report["gone"] == [f"s3://{doomed.bucket}: bucket {doomed.bucket!r} does not exist"]
    human = run_ferry(["reconcile"], ferry_env)
    assert human.returncode == 0, human.stderr
    assert f"destination gone: s3://{doomed.bucket}" in human.stderr and "failed:" not in human.stderr


def test_usage_errors_and_typer_exits_keep_their_non_zero_codes(ferry_env):
    result = run_ferry(["reconcile", "--action", "sideways"], ferry_env)
    assert result.returncode == 2 and "must be 'abort' or 'resume'" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "unexpected" not in result.stderr
    result = run_ferry(["no-such-command"], ferry_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_the_progress_bar_shown_on_a_terminal_follows_the_transaction(tmp_path, monkeypatch):
    # `ferry ingest` and `transactions resume` draw it only when stderr is a terminal,
    # which subprocess tests never are: run the watcher in-process
    from ferry.cli.ingest_cmds import _watch_transaction

    monkeypatch.setenv("FERRY_DATABASE_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    assert _watch_transaction("no-such-transaction", lambda: "done", show=True) == "done"


def test_a_rerun_over_an_unchanged_folder_says_nothing_new(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "in", {"robot/rec/a.bin": 1000, "robot/rec/b.bin": 2000})
    args = ["ingest", str(source), "--to", f"s3://{bucket.bucket}"]
    assert run_ferry(args, ferry_env).returncode == 0  # the flow test checks the --json report of a rerun
    again = run_ferry(args, ferry_env)
    assert again.returncode == 0, again.stderr
    assert "completed: nothing new" in again.stdout and "all 2 file(s) are stored already" in again.stdout
