"""Rolling archives on real files: the CLI recording 20,000 records, the official `mcap`
reader reading every file, raising callbacks, names that never collide, recovery after
a truncation at byte offsets of the last chunk and after bytes flipped inside a chunk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcap.reader import NonSeekingReader, make_reader

from storage_core.device.archive import (
    ArchiveWriter,
    read_archives,
    recover_file,
    recover_folder,
    scan_archive,
)
from storage_core.errors import ArchiveError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SOAK = bool(os.environ.get("FERRY_SOAK"))


def ferry(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "ferry.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def official(path: Path) -> list[tuple[str, int, int, bytes]]:
    """(topic, Message.sequence, log time, data) of every message, read by the `mcap`
    library twice: through the summary (CRCs checked) and in one validating pass."""
    with open(path, "rb") as handle:
        seeking = [(c.topic, m.sequence, m.log_time, m.data) for _, c, m in make_reader(handle, validate_crcs=True).iter_messages()]
    with open(path, "rb") as handle:
        reader = NonSeekingReader(handle, validate_crcs=True)
        streamed = [(c.topic, m.sequence, m.log_time, m.data) for _, c, m in reader.iter_messages()]
    assert seeking == streamed
    return seeking


def payload(i: int) -> bytes:
    return (f"record {i} " * (1 + i % 7)).encode()


def write_archive(folder: Path, count: int, **options) -> Path:
    with ArchiveWriter(folder, durability="close", chunk_size=8 * 1024, **options) as writer:
        for i in range(count):
            writer.write(payload(i), topic=f"/t{i % 3}", metadata={"i": str(i)}, log_time=1_000 + i)
    (path,) = folder.glob("*.mcap")
    return path


@pytest.mark.slow
def test_20000_records_through_the_cli_roll_and_read_back_in_order(tmp_path: Path) -> None:
    noise = [hashlib.sha256(str(i).encode()).hexdigest() * (1 + i % 6) for i in range(20_000)]  # ~2.5 MB as lz4
    lines = [json.dumps({"topic": f"/sensor/{i % 4}", "metadata": {"i": str(i)}, "payload": f"{i:08d}{noise[i]}",
                         "time_ns": 10**18 + i}) for i in range(20_000)]  # fmt: skip
    done = ferry("archive", "record", str(tmp_path / "a"), "--roll-size", "1MiB", "--compression", "lz4", "--json",
                 stdin="\n".join(lines) + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == 20_000
    archives = sorted((tmp_path / "a").glob("*.mcap"))
    assert len(archives) >= 3 and not list((tmp_path / "a").glob("*.open"))
    assert all(p.stat().st_size <= 1024 * 1024 + 64 * 1024 for p in archives)  # the roll size, plus the summary

    cat = ferry("archive", "cat", str(tmp_path / "a" / "*.mcap"), "--json")
    assert cat.returncode == 0, cat.stderr
    got = [json.loads(line) for line in cat.stdout.splitlines()]
    assert [g["sequence"] for g in got] == list(range(20_000))
    assert [(g["topic"], g["metadata"], g["payload"], g["time_ns"]) for g in got] == [
        (json.loads(line)["topic"], json.loads(line)["metadata"], json.loads(line)["payload"], json.loads(line)["time_ns"])
        for line in lines
    ]
    ours = list(read_archives([tmp_path / "a"]))
    by_archive = {}
    for record in ours:
        by_archive.setdefault(record.archive, []).append(record)
    for path in archives:
        theirs = official(path)
        mine = by_archive[path.name]
        assert [(t, s, lt) for t, s, lt, _ in theirs] == [(r.topic, r.sequence, r.log_time) for r in mine]
        assert scan_archive(path).intact

    verify = ferry("archive", "verify", str(tmp_path / "a"), "--json")
    assert verify.returncode == 0, verify.stdout
    assert sum(v["records"] for v in json.loads(verify.stdout)) == 20_000


def test_bad_input_stops_with_one_line_and_keeps_what_was_written(tmp_path: Path) -> None:
    done = ferry("archive", "record", str(tmp_path), stdin='{"payload": "a"}\n{"payload": "b"}\nnot json\n')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: stdin line 3: not JSON (Expecting value: line 1 column 1 (char 0))"]
    assert [r.payload for r in read_archives([tmp_path])] == [b"a", b"b"]


def test_raising_callbacks_are_logged_and_lose_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    def broken(info) -> None:
        seen.append(info)
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR), ArchiveWriter(tmp_path, roll_size=20_000, on_open=broken, on_close=broken) as writer:
        for i in range(2_000):
            writer.write(payload(i))
        writer.roll()
    assert [r.sequence for r in read_archives([tmp_path])] == list(range(2_000))
    archives = sorted(tmp_path.glob("*.mcap"))
    assert len(archives) > 2 and len(seen) == 2 * len(archives)
    closed = [info for info in seen if info.path.suffix == ".mcap"]
    assert [info.path for info in closed] == archives
    assert sum(info.records for info in closed) == 2_000
    assert "callback bug" in caplog.text


def test_names_never_collide_and_sequences_go_on_across_writers(tmp_path: Path) -> None:
    for _ in range(2):
        with ArchiveWriter(tmp_path, roll_size=4_000, name_template="same-name") as writer:
            for i in range(300):
                writer.write(payload(i))
    names = sorted(p.name for p in tmp_path.glob("*.mcap"))
    assert len(names) > 4 and names[0] == "same-name-000001.mcap"
    assert [int(n[-11:-5]) for n in names] == list(range(1, len(names) + 1))
    assert [r.sequence for r in read_archives([tmp_path])] == list(range(600))


def test_one_writer_per_folder(tmp_path: Path) -> None:
    with ArchiveWriter(tmp_path):
        with pytest.raises(ArchiveError, match="another writer"):
            ArchiveWriter(tmp_path)


# --- damage and recovery ------------------------------------------------------------------


def chunks(path: Path) -> list[tuple[int, int]]:
    """[start, end) of every chunk record, from the summary."""
    with open(path, "rb") as handle:
        summary = make_reader(handle).get_summary()
    return [(c.chunk_start_offset, c.chunk_start_offset + c.chunk_length) for c in summary.chunk_indexes]


def sequences_in(path: Path, span: tuple[int, int]) -> list[int]:
    """Sequences of the records inside one chunk (by its time range: each record has its own log time)."""
    with open(path, "rb") as handle:
        reader = make_reader(handle)
        index = next(c for c in reader.get_summary().chunk_indexes if c.chunk_start_offset == span[0])
        return sorted(m.sequence for _, _, m in reader.iter_messages() if index.message_start_time <= m.log_time <= index.message_end_time)


def sampled(start: int, end: int) -> set[int]:
    """Cuts worth the `mcap` library's read too: the chunk's head fields, its middle, its end."""
    return {start, start + 1, start + 8, start + 9, start + 30, start + 45, (start + end) // 2, end - 2, end - 1}


@pytest.mark.slow
def test_truncation_at_every_offset_of_the_last_chunk_loses_exactly_that_chunk(tmp_path: Path) -> None:
    """Every byte offset of the last chunk (a small archive keeps that quick; FERRY_SOAK=1
    takes a 3,000-record one): verify names exactly the cut range, recovery keeps every
    record before it, and the recovered file reads with the `mcap` library."""
    original = write_archive(tmp_path / "a", 3_000 if SOAK else 600)
    spans = chunks(original)
    assert len(spans) > 5
    start, end = spans[-1]
    first_lost = sequences_in(original, spans[-1])[0]
    before = [r for r in read_archives([original]) if r.sequence < first_lost]
    data = original.read_bytes()
    for cut in range(start, end):
        damaged = tmp_path / f"cut-{cut}.mcap"
        damaged.write_bytes(data[:cut])
        scan = scan_archive(damaged)
        assert not scan.closed
        assert [(d.start, d.end) for d in scan.damaged] == ([] if cut == start else [(start, cut)]), cut
        if scan.damaged:
            assert (scan.damaged[0].lost_from, scan.damaged[0].lost_to) == (before[-1].sequence + 1, None)
        out = tmp_path / f"recovered-{cut}.mcap"
        report = recover_file(damaged, out)
        assert report.lost == (cut != start)
        assert list(read_archives([out])) == [r.__class__(**{**r.__dict__, "archive": out.name}) for r in before]
        if SOAK or cut in sampled(start, end):
            assert [s for _, s, _, _ in official(out)] == [r.sequence for r in before]
        damaged.unlink()
        out.unlink()


@pytest.mark.parametrize("where", ["data", "length"])
def test_flipped_bytes_in_a_middle_chunk_lose_that_chunk_only(tmp_path: Path, where: str) -> None:
    original = write_archive(tmp_path / "a", 3_000)
    spans = chunks(original)
    start, end = spans[len(spans) // 2]
    lost = sequences_in(original, (start, end))
    data = bytearray(original.read_bytes())
    if where == "data":
        for offset in range(end - 40, end - 30):
            data[offset] ^= 0x5A
    else:
        data[start + 3] ^= 0x01  # the chunk's length: resynchronise by scanning forward
    damaged = tmp_path / "flipped.mcap"
    damaged.write_bytes(bytes(data))

    scan = scan_archive(damaged)
    (hit,) = scan.damaged
    if where == "data":
        assert (hit.start, hit.end) == (start, end)
    else:
        assert hit.start == start and end <= hit.end <= spans[len(spans) // 2 + 1][0]
    assert (hit.lost_from, hit.lost_to) == (lost[0], lost[-1])
    assert scan.closed and scan.records == 3_000 - len(lost)

    out = tmp_path / "recovered.mcap"
    expected = [i for i in range(3_000) if i not in set(lost)]
    if where == "length":  # the library alone; the CLI's exit codes are checked once, below
        assert recover_file(damaged, out).lost
        assert [s for _, s, _, _ in official(out)] == expected
        return
    verify = ferry("archive", "verify", str(damaged), "--json")
    assert verify.returncode == 3
    (reported,) = json.loads(verify.stdout)[0]["damaged"]
    assert (reported["start"], reported["end"], reported["lost"]) == (hit.start, hit.end, len(lost))

    done = ferry("archive", "recover", str(damaged), "--to", str(out))
    assert done.returncode == 3, done.stderr
    assert [s for _, s, _, _ in official(out)] == expected
    assert [r.payload for r in read_archives([out])] == [payload(i) for i in expected]
    again = ferry("archive", "recover", str(out), "--to", str(tmp_path / "again.mcap"))
    assert again.returncode == 0, again.stdout  # nothing lost the second time
    refused = ferry("archive", "recover", str(damaged), "--to", str(out))
    assert refused.returncode == 1 and "exists" in refused.stderr


def test_reopening_a_folder_recovers_open_archives_and_quarantines_the_torn_tail(tmp_path: Path) -> None:
    original = write_archive(tmp_path / "a", 3_000)
    start, _ = chunks(original)[-1]
    folder = tmp_path / "b"
    folder.mkdir()
    torn = folder / (original.name + ".open")
    torn.write_bytes(original.read_bytes()[: start + 100])
    shutil.copy(tmp_path / "a" / ".ferry-archive.json", folder)
    with ArchiveWriter(folder) as writer:
        next_sequence = writer.write(b"after the crash")
    assert recover_folder(folder) == []  # nothing left to recover
    assert not list(folder.glob("*.open"))
    records = list(read_archives([folder]))
    kept = [r.sequence for r in records[:-1]]
    assert kept == list(range(len(kept))) and records[-1].payload == b"after the crash"
    assert next_sequence == 3_000  # numbering goes on past every sequence handed out
    quarantined = sorted(p.name for p in (folder / "quarantine").iterdir())
    assert quarantined == [f"{torn.name}.{start}-{start + 100}.bin", f"{torn.name}.json"]
    assert (folder / "quarantine" / quarantined[0]).read_bytes() == original.read_bytes()[start : start + 100]


def test_a_file_that_is_not_an_archive_is_quarantined_not_retried(tmp_path: Path) -> None:
    (tmp_path / "junk.mcap.open").write_bytes(os.urandom(5_000))
    (tmp_path / "empty.mcap.open").write_bytes(b"")
    with ArchiveWriter(tmp_path) as writer:
        writer.write(b"x")
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == ["junk.mcap.open", "junk.mcap.open.json"]
    assert not (tmp_path / "empty.mcap.open").exists()
    assert "no intact record" in json.loads((tmp_path / "quarantine" / "junk.mcap.open.json").read_text())["reason"]
    assert recover_folder(tmp_path) == []


def test_recover_refuses_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        recover_file(tmp_path / "nope.mcap", tmp_path / "out.mcap")


def test_numbers_a_dead_writer_reserved_show_as_a_gap_between_archives(tmp_path: Path) -> None:
    with ArchiveWriter(tmp_path) as writer:
        writer.write(b"before")
    state = tmp_path / ".ferry-archive.json"  # as a writer killed with no archive open leaves it
    state.write_text(json.dumps({**json.loads(state.read_text()), "next_record": 1_024}))
    with ArchiveWriter(tmp_path) as writer:
        assert writer.write(b"after") == 1_024
    verify = ferry("archive", "verify", str(tmp_path), "--json")
    assert verify.returncode == 3
    assert [v["possibly_lost"] for v in json.loads(verify.stdout)] == [[], [{"first": 1, "last": 1_023, "count": 1_023}]]


@pytest.mark.slow
def test_bench_archive_runs_every_side_on_the_same_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """`ferry bench archive` at a tiny size: every side, both record sizes, and the line saying
    what both sides share (compression, chunk size, CRCs); speed is the bench's business."""
    from bench.archive import COMPARED, main

    assert main(["--records-256", "300", "--records-64k", "5", "--rounds", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(COMPARED) == 2
    for side in ("mcap", "ferry-group", "ferry-close"):
        assert len([line for line in printed.splitlines() if line.split()[:1] == [side]]) == 2, printed
