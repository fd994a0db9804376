"""Closed archives handed to a real gateway (SeaweedFS, SQLite catalog) exactly once:
stored byte-exact, removed locally only afterwards, a killed `ferry device-upload --archives`
rerun without a second upload; retention drops uploaded archives first, never the rest."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from mcap.reader import make_reader

from storage_core.catalog.queries import list_objects
from storage_core.device.archive import ArchiveWriter, read_archives
from storage_core.device.archive.handoff import LEDGER, UploadedArchive, hand_off
from storage_core.device.archive.retention import not_uploaded
from storage_core.errors import ArchiveFolderFull, GatewayError
from storage_core.ranges.reader import DEFAULT_TAIL_SIZE

ROOT = Path(__file__).resolve().parents[2]


def record(folder: Path, count: int, *, roll_size: int = 64 * 1024) -> dict[str, bytes]:
    with ArchiveWriter(folder, roll_size=roll_size, compression="none") as writer:
        for i in range(count):
            writer.write(os.urandom(200), metadata={"i": str(i)})
    return {p.name: p.read_bytes() for p in folder.glob("*.mcap")}


def stored(gateway, recording: str, name: str, size: int) -> bytes | None:
    try:
        return gateway.store.get_range(f"lake/cam-1/{recording}/{name}", 0, size)
    except Exception:  # noqa: BLE001 - not stored (yet)
        return None


def test_archives_are_stored_once_then_removed_and_a_rerun_sends_nothing(gateway, tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    archives = record(folder, 1_000)
    assert len(archives) >= 3
    report = hand_off(folder, gateway=gateway.url, token=gateway.token)
    assert sorted(report.uploaded) == sorted(archives) == sorted(report.removed)
    for name, data in archives.items():
        assert stored(gateway, "rec", name, len(data)) == data
    assert not list(folder.glob("*.mcap")) and not (folder / ".handoff").exists()
    again = hand_off(folder, gateway=gateway.url, token=gateway.token)
    assert again.uploaded == [] and again.pending == []
    assert len(list_objects(gateway.catalog)) == len(archives)


def summary_by_the_mcap_library(data: bytes) -> tuple[dict[str, int], int, int, int]:
    """(messages per topic, first and last log time, metadata records) as the official reader
    sees the archive, reading every message (CRCs checked)."""
    counts: dict[str, int] = {}
    times = []
    reader = make_reader(BytesIO(data), validate_crcs=True)
    for _, channel, message in reader.iter_messages():
        counts[channel.topic] = counts.get(channel.topic, 0) + 1
        times.append(message.log_time)
    return counts, min(times), max(times), sum(1 for _ in reader.iter_metadata())


def test_a_handed_off_archive_is_summarized_from_the_store_as_the_mcap_library_reads_it(gateway, tmp_path: Path) -> None:
    """`ferry device-upload --archives`, then `ferry summarize s3://...` of each stored archive:
    read by ranges (the summary section, at most two requests), it agrees with the `mcap`
    library reading every message of the same bytes."""
    folder = tmp_path / "rec"
    with ArchiveWriter(folder, roll_size=512 * 1024, chunk_size=32 * 1024) as writer:  # zstd, several chunks each
        for i in range(10_000):
            writer.write(os.urandom(40 + i % 200), topic=f"/sensor/{i % 3}" if i % 10 else "/events",
                         metadata={"i": str(i)}, log_time=1_700_000_000_000_000_000 + i * 1_000_003)  # fmt: skip
    archives = {p.name: p.read_bytes() for p in sorted(folder.glob("*.mcap"))}
    assert len(archives) >= 3 and any(len(data) > DEFAULT_TAIL_SIZE for data in archives.values())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}, "PYTHONPATH": str(ROOT)}
    ferry = [sys.executable, "-m", "ferry.cli"]
    done = subprocess.run([*ferry, "device-upload", str(folder), "--archives", "--gateway", gateway.url, "--token",
                           gateway.token], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not list(folder.glob("*.mcap"))  # all stored, so removed

    uris = [f"s3://{gateway.store.bucket}/lake/cam-1/rec/{name}" for name in archives]
    done = subprocess.run([*ferry, "summarize", *uris, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summaries = json.loads(done.stdout)
    assert [s["uri"] for s in summaries] == uris
    total = 0
    for (name, data), result in zip(archives.items(), summaries):
        summary = result["summary"]
        counts, start, end, metadata = summary_by_the_mcap_library(data)
        assert summary["source"] == "summary" and not summary["truncated"] and summary["summary_crc_verified"], name
        assert result["requests"] <= 2, name
        if len(data) > DEFAULT_TAIL_SIZE:  # smaller ones come whole with the first (tail) GET
            assert result["bytes_fetched"] < len(data), name
        assert summary["size"] == len(data)
        assert {t["topic"]: t["message_count"] for t in summary["topics"]} == counts, name
        assert all(t["message_encoding"] == "ferry.record/1" for t in summary["topics"])
        assert (summary["message_count"], summary["start_time"], summary["end_time"]) == (sum(counts.values()), start, end)
        assert len(summary["metadata"]) == metadata  # the archive's identity and its channels' announcements
        total += summary["message_count"]
    assert total == 10_000


@pytest.mark.slow
def test_killed_hand_offs_never_upload_twice_nor_lose_an_archive(gateway, tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    archives = record(folder, 3_000)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ferry.cli", "device-upload", str(folder), "--archives", "--gateway", gateway.url,
               "--token", gateway.token]  # fmt: skip
    rng = random.Random(15)
    kills = 0
    for trial in range(40):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # a whole run takes about a second; the first runs are cut ever later, so kills land before,
            # during and between uploads (the first one surely: the interpreter alone needs 0.1 s)
            process.wait(timeout=0.15 + trial * rng.uniform(0.1, 0.2) if trial < 6 else 60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        for name, data in archives.items():  # removed locally only once stored, byte-exact
            if not (folder / name).exists():
                assert stored(gateway, "rec", name, len(data)) == data, (trial, name)
        if process.returncode == 0:
            break
    else:
        pytest.fail("device-upload --archives never finished")
    print(f"{kills} kill(s) before the run that finished")
    assert kills >= 1 and not list(folder.glob("*.mcap"))
    for name, data in archives.items():
        assert stored(gateway, "rec", name, len(data)) == data
    assert len(list_objects(gateway.catalog)) == len(archives)  # one object each: nothing stored twice


def test_retention_drops_uploaded_archives_first_and_pushes_back_otherwise(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    archives = sorted(record(folder, 1_000, roll_size=32 * 1024))
    assert len(archives) >= 6
    sent: list[str] = []

    def upload(stage: Path, **_: object) -> None:
        sent.extend(p.name for p in stage.rglob("*.mcap"))

    report = hand_off(folder, gateway="http://unused", token="t", upload=upload, keep_uploaded=True, keep_archives=3)
    assert sent == archives and report.removed == archives
    assert sorted(p.name for p in (folder / "uploaded").iterdir()) == archives[-3:]  # the oldest dropped
    assert report.dropped == archives[:-3] and not report.back_pressure

    more = sorted(set(record(folder, 1_000, roll_size=32 * 1024)))

    def failing(stage: Path, **_: object) -> None:
        raise GatewayError("gateway down", retryable=True)

    with pytest.raises(GatewayError):
        hand_off(folder, gateway="http://unused", token="t", upload=failing, keep_uploaded=True, keep_archives=3)
    assert sorted(p.name for p in folder.glob("*.mcap")) == more  # nothing not yet uploaded is ever dropped
    report = hand_off(folder, gateway="http://unused", token="t", upload=upload, keep_uploaded=True, keep_archives=100)
    assert report.uploaded == more and (folder / LEDGER).exists()


def copying_upload(remote: Path):
    """An upload that copies the staged archive to `remote` (the gateway's part is tested above)."""

    def upload(stage: Path, **_: object) -> None:
        for path in stage.rglob("*.mcap"):
            shutil.copy(path, remote / path.name)

    return upload


def test_a_writer_over_its_budget_blocks_until_the_hand_off_uploads(tmp_path: Path) -> None:
    folder, remote = tmp_path / "rec", tmp_path / "remote"
    remote.mkdir()
    writer = ArchiveWriter(folder, roll_size=16 * 1024, compression="none", keep_archives=3)
    done = threading.Event()

    def produce() -> None:
        for i in range(1_000):
            writer.write(os.urandom(200), metadata={"i": str(i)})
        done.set()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not writer._blocked:  # three archives (the open one too) and the writer waits
        assert time.monotonic() < deadline and not done.is_set(), "the writer never blocked"
        time.sleep(0.02)
    assert len(not_uploaded(folder)) == 3
    uploaded: list[UploadedArchive] = []
    while not done.is_set():
        hand_off(folder, gateway="http://unused", token="t", upload=copying_upload(remote), on_uploaded=uploaded.append)
        assert time.monotonic() < deadline, "the writer never got going again"
        time.sleep(0.05)
    thread.join()
    writer.close()
    hand_off(folder, gateway="http://unused", token="t", upload=copying_upload(remote), on_uploaded=uploaded.append)
    assert [r.sequence for r in read_archives([remote])] == list(range(1_000))  # every record uploaded once
    assert sorted(u.path.name for u in uploaded) == sorted(p.name for p in remote.iterdir())
    assert all(u.bytes == (remote / u.path.name).stat().st_size for u in uploaded)


def test_a_writer_over_its_budget_can_refuse_records_instead(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, remote = tmp_path / "rec", tmp_path / "remote"
    remote.mkdir()
    with ArchiveWriter(folder, roll_size=16 * 1024, compression="none", keep_archives=3, when_full="refuse") as writer:
        written = 0
        with pytest.raises(ArchiveFolderFull, match=r"fill its budget \(3 archive\(s\)\)"):
            for i in range(1_000):
                writer.write(os.urandom(200))
                written += 1
        assert written < 1_000 and len(not_uploaded(folder)) == 3

        def broken(_: UploadedArchive) -> None:
            raise RuntimeError("callback bug")

        with caplog.at_level(logging.ERROR):
            report = hand_off(folder, gateway="http://unused", token="t", upload=copying_upload(remote), on_uploaded=broken)
        assert len(report.uploaded) >= 2 and "callback bug" in caplog.text  # logged; the hand-off went on
        assert writer.write(b"room again") == written
    assert [r.sequence for r in read_archives([remote, folder])] == list(range(written + 1))
