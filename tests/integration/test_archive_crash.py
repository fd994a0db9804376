"""Rolling archives under real crashes: a writer SIGKILLed while records stream in (each
durability mode keeps what it promises), a full disk and a read-only folder (one line,
nothing already written lost)."""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcap.reader import make_reader

import storage_core.device.archive.writer as writer_module
from storage_core.device.archive import ArchiveWriter, PossiblyLost, read_archives, recover_folder, scan_archive
from storage_core.errors import ArchiveError

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
import storage_core.device.archive.writer as writer_module
from storage_core.device.archive import ArchiveWriter

class StepClock:  # the writer's clock, one millisecond (and a hair) per record
    now = 0.0
    def monotonic(self):
        return self.now
    time_ns = staticmethod(time.time_ns)

clock = StepClock() if sys.argv[3:] == ["steps"] else None
if clock is not None:
    writer_module.time = clock
writer = ArchiveWriter(sys.argv[1], durability=sys.argv[2], roll_size=64 * 1024, group_ms=20, chunk_size=16 * 1024)
for line in sys.stdin:
    i = int(line)
    if clock is not None:
        clock.now = i * 1.0001e-3
    writer.write((f"record {i} " * (1 + i % 5)).encode(), metadata={"i": str(i)})
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
"""


def payload(i: int) -> bytes:
    return (f"record {i} " * (1 + i % 5)).encode()


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}, "PYTHONPATH": str(ROOT)}


class Recorder:
    """A writer process fed numbers on stdin that acknowledges each record once `write` returned."""

    def __init__(self, folder: Path, durability: str, *options: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), durability, *options], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env(), text=True, bufsize=1)  # fmt: skip
        self.acked = -1

    def send(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            self.process.stdin.write(f"{i}\n")
        self.process.stdin.flush()

    def stream(self, start: int) -> threading.Thread:
        def feed() -> None:
            try:
                self.send(start, start + 1_000_000)
            except (BrokenPipeError, OSError, ValueError):
                pass  # killed

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        return thread

    def wait_acks(self, upto: int) -> None:
        while self.acked < upto:
            line = self.process.stdout.readline()
            assert line, "the writer exited"
            self.acked = int(line)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        self.process.stdout.close()


def check_prefix(folder: Path, at_least: int) -> int:
    """Recover the folder; its records must be 0..k-1 exactly (k >= at_least), undamaged,
    and every file must read with the `mcap` library."""
    recover_folder(folder)
    assert not list(folder.glob("*.open"))
    records = list(read_archives([folder]))
    assert [r.sequence for r in records] == list(range(len(records)))
    assert len(records) >= at_least
    assert all(r.payload == payload(r.sequence) and r.metadata == {"i": str(r.sequence)} for r in records)
    for path in folder.glob("*.mcap"):
        with open(path, "rb") as handle:
            assert sum(1 for _ in make_reader(handle, validate_crcs=True).iter_messages()) == scan_archive(path).records
    return len(records)


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sigkill_with_durability_record_loses_no_acknowledged_record(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "record")
    recorder.stream(0)
    recorder.wait_acks(300)
    recorder.kill()
    check_prefix(tmp_path, at_least=recorder.acked + 1)


def test_sigkill_with_durability_group_loses_at_most_the_last_group(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "group")
    recorder.send(0, 2_000)
    recorder.wait_acks(1_999)
    # idle now: within group-ms (20 ms) the flusher writes the open chunk without any new record
    wait_until(lambda: sum(1 for _ in read_archives([tmp_path])) == 2_000, "the group flush")
    recorder.stream(2_000)
    recorder.wait_acks(4_000)
    recorder.kill()
    check_prefix(tmp_path, at_least=2_000)


def test_sigkill_with_durability_group_while_streaming_loses_at_most_one_group(tmp_path: Path) -> None:
    """The writer's clock moves one millisecond per record (group-ms 20), so "the last group"
    is the last 20 records, however busy the machine: a SIGKILL in mid-stream loses no more."""
    recorder = Recorder(tmp_path, "group", "steps")
    recorder.stream(0)
    recorder.wait_acks(5_000)
    recorder.kill()
    check_prefix(tmp_path, at_least=recorder.acked + 1 - 20)


def test_after_sigkill_no_number_is_reused_and_the_skipped_ones_are_reported(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "close")  # the open chunk (up to 16 KiB of records) dies with the process
    recorder.stream(0)
    recorder.wait_acks(3_000)
    recorder.kill()

    with ArchiveWriter(tmp_path) as writer:
        after = writer.write(b"after the crash")
    kept = [r.sequence for r in read_archives([tmp_path]) if r.payload != b"after the crash"]
    assert kept == list(range(len(kept)))
    assert after > recorder.acked  # every number the dead writer handed out stays unused
    assert after > len(kept)  # so the gap is visible ...
    lost = PossiblyLost(len(kept), after - 1)
    assert [r.possibly_lost for r in writer.recovered if r.possibly_lost] == [[lost]]  # ... and named
    done = subprocess.run([sys.executable, "-m", "ferry.cli", "archive", "verify", str(tmp_path)], env=env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"sequences possibly lost {lost.first}..{lost.last} ({lost.count}) in a crash, after this archive" in done.stdout
    assert "before this archive" not in done.stdout  # named once, by the recovered archive
    notes = list((tmp_path / "quarantine").glob("*.json"))
    for note in notes:  # a torn tail, when the kill cut a chunk
        assert json.loads(note.read_text())["possibly_lost"] == {"first": lost.first, "last": lost.last}

    with ArchiveWriter(tmp_path) as writer:  # a clean close gives unused numbers back: no gap
        assert writer.write(b"next") == after + 1


# --- group durability on a busy writer and a slow disk --------------------------------------


class StepClock:
    """The writer's clock (`time` in writer.py), moved on by the test: one record per millisecond
    of it, however fast or slow the machine is."""

    STEP = 1.0001e-3  # a hair over 1 ms: 10 steps reach a 10 ms group despite float rounding

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def at_record(self, i: int) -> None:
        self.now = i * self.STEP

    time_ns = staticmethod(time.time_ns)


class SlowDisk:
    """os.fdatasync that takes longer than the group: records which file sizes each finished
    fsync made durable (the size when it started: what was written before it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        self.durable: list[int] = []
        self.delay = delay
        self._real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(self.delay)
        self._real(fd)
        self.durable.append(size)


def records_within(path: Path, size: int, scratch: Path) -> int:
    """How many records the first `size` bytes of the archive at `path` hold intact."""
    prefix = scratch / f"prefix-{size}.mcap.open"
    with open(path, "rb") as source:
        prefix.write_bytes(source.read(size))
    return scan_archive(prefix).records


def test_group_durability_holds_while_the_writer_never_pauses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`group`: a record is durable at most one group (10 ms here) plus one fsync after `write`
    returned. The writer never pauses (one record per millisecond of its clock, no real time
    between records) and each fsync takes 20 ms of real time, so only back-pressure can hold
    the promise: when `write(i)` returns, the finished fsyncs hold every record but the last
    two groups."""
    clock = StepClock()
    monkeypatch.setattr(writer_module, "time", clock)
    disk = SlowDisk(monkeypatch, delay=0.02)
    folder, scratch = tmp_path / "a", tmp_path / "scratch"
    scratch.mkdir()
    group, count = 10, 300
    durable_after = []  # (i, bytes made durable when write(i) returned)
    with ArchiveWriter(folder, group_ms=group, chunk_size=1 << 20) as writer:  # no chunk fills: groups only
        for i in range(count):
            clock.at_record(i)
            writer.write(payload(i), metadata={"i": str(i)}, log_time=i)
            durable_after.append((i, max(disk.durable, default=0)))
    (path,) = folder.glob("*.mcap")
    assert len(disk.durable) >= count // group - 2  # one fsync per group, while the records streamed in
    held = {size: records_within(path, size, scratch) for size in {size for _, size in durable_after}}
    behind = [(i, held[size]) for i, size in durable_after if held[size] < i + 1 - 2 * group - 1]
    assert not behind, f"acknowledged records not yet durable two groups later (record, records durable): {behind[:5]}"
    check_prefix(folder, at_least=count)


def test_a_failed_group_fsync_stops_the_writer_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fsync that fails may have lost written pages (Linux drops them): the writer refuses
    further records with the error, and what it wrote stays recoverable."""
    clock = StepClock()
    monkeypatch.setattr(writer_module, "time", clock)

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    writer = ArchiveWriter(tmp_path, group_ms=10)
    written = 0
    with pytest.raises(ArchiveError, match=r"^cannot write archive .*: Input/output error$"):
        for i in range(1_000_000):
            clock.at_record(i)
            writer.write(payload(i), metadata={"i": str(i)})
            written += 1
            time.sleep(0.001)  # real time for the syncer thread to fail
    with pytest.raises(ArchiveError, match="Input/output error"):
        writer.close()
    monkeypatch.undo()
    check_prefix(tmp_path, at_least=10)  # the first group had been handed to the OS


# --- a full disk, a read-only folder ------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def ferry(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry.cli", *args], input=stdin, env=env(), capture_output=True, text=True,
                          timeout=240)  # fmt: skip


def lines(count: int, size: int) -> str:
    return "".join(
        f'{{"metadata": {{"i": "{i}"}}, "payload_b64": "{base64.b64encode(os.urandom(size)).decode()}"}}\n' for i in range(count)
    )


def test_a_full_disk_stops_with_one_line_and_keeps_what_was_written(small_disk: Path) -> None:
    folder = small_disk / "a"
    done = ferry("archive", "record", str(folder), "--roll-size", "256KiB", "--chunk-size", "32KiB", stdin=lines(400, 8_000))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: cannot ") and "No space left on device" in line, done.stderr
    readable = list(read_archives([folder]))  # closed archives and the .open one, to their last intact record
    assert readable and [r.sequence for r in readable] == list(range(len(readable)))
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    recover_folder(folder)
    assert [r.sequence for r in read_archives([folder])] == [r.sequence for r in readable]


def test_a_read_only_folder_is_one_line_and_touches_nothing(small_disk: Path) -> None:
    folder = small_disk / "a"
    done = ferry("archive", "record", str(folder), stdin='{"payload": "kept"}\n')
    assert done.returncode == 0, done.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    refused = ferry("archive", "record", str(folder), stdin='{"payload": "refused"}\n')
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [f"error: cannot use the archive folder {folder}: Read-only file system"]
    assert [r.payload for r in read_archives([folder])] == [b"kept"]
