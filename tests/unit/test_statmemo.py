"""The stat memo: what it answers for, git's racy-timestamp rule, and that it never fails a scan."""

from __future__ import annotations

import os

from storage_core.statmemo import GRANULARITY_NS, FileRead, FileStamp, MemoEntry, StatMemo

STAMP = FileStamp(dev=1, ino=2, size=3, mtime_ns=10**18, ctime_ns=10**18)


def test_a_settled_entry_answers_for_the_same_stamp_only():
    entry = MemoEntry(STAMP, crc32c=7, read_ns=STAMP.mtime_ns + GRANULARITY_NS + 1)
    assert entry.answers(STAMP, GRANULARITY_NS)
    for changed in (FileStamp(9, 2, 3, 10**18, 10**18), FileStamp(1, 9, 3, 10**18, 10**18),
                    FileStamp(1, 2, 9, 10**18, 10**18), FileStamp(1, 2, 3, 10**18 + 1, 10**18),
                    FileStamp(1, 2, 3, 10**18, 10**18 + 1)):
        assert not entry.answers(changed, GRANULARITY_NS)


def test_an_entry_read_within_the_granularity_of_the_files_times_is_racy():
    # the file could change again within the same timestamp tick without changing its stat
    for written in (STAMP.mtime_ns, STAMP.mtime_ns + 1, STAMP.mtime_ns + GRANULARITY_NS):
        assert not MemoEntry(STAMP, crc32c=7, read_ns=written).answers(STAMP, GRANULARITY_NS)
    late_ctime = FileStamp(1, 2, 3, 10**18, 10**18 + GRANULARITY_NS)  # mtime set back, ctime moved (touch -d)
    assert not MemoEntry(late_ctime, 7, read_ns=10**18 + GRANULARITY_NS + 1).answers(late_ctime, GRANULARITY_NS)


def test_entries_persist_are_found_under_their_folder_and_forgotten(tmp_path):
    memo = StatMemo(tmp_path / "home" / "memo.sqlite3", granularity_ns=0)
    read = FileRead(STAMP, started_ns=STAMP.mtime_ns + 1)
    memo.record([("/land/a/1.bin", read, 11), ("/land/a/2.bin", read, 12), ("/land-other/3.bin", read, 13)])
    again = StatMemo(tmp_path / "home" / "memo.sqlite3", granularity_ns=0)
    known = again.entries_under("/land")
    assert sorted(known) == ["/land/a/1.bin", "/land/a/2.bin"]
    assert again.lookup(known, "/land/a/1.bin", STAMP) == 11
    again.forget(["/land/a/1.bin"])
    assert sorted(again.entries_under("/land/")) == ["/land/a/2.bin"]


def test_a_memo_that_cannot_be_read_or_written_is_empty_not_an_error(tmp_path):
    broken = tmp_path / "memo.sqlite3"
    broken.write_bytes(b"not a database" * 100)
    memo = StatMemo(broken)
    assert memo.entries_under("/land") == {}
    memo.record([("/land/1.bin", FileRead(STAMP, 0), 1)])  # logged, not raised
    assert memo.lookup({}, "/land/1.bin", STAMP) is None


def test_a_missing_memo_is_not_created_by_a_lookup(tmp_path):
    memo = StatMemo(tmp_path / "none" / "memo.sqlite3")
    assert memo.entries_under(os.fspath(tmp_path)) == {}
    assert not (tmp_path / "none").exists()
