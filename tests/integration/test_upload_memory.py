"""Memory stays bounded by configuration whatever the file size: a 20 GiB (sparse) file
goes through upload_file with peak RSS growth below concurrency × part size + slack.

The store is a sink that verifies and discards parts: the point is Ferry's own buffering,
and 20 GiB to a real server would take minutes. Measured in a child process (VmHWM)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a 20 GiB upload in a child process

MiB = 1024 * 1024

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from storage_core.checksums import crc32c
    from storage_core.stores.base import ObjectMeta
    from storage_core.upload import upload_file

    def peak_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    class Sink:
        multipart_threshold = 64 * 1024 * 1024
        uri = "sink://"
        def __init__(self):
            self.parts = {}
        def create_multipart(self, key):
            return "u1"
        def upload_part(self, key, upload_id, number, data, *, crc32c):
            assert crc32c_fn(data) == crc32c
            self.parts[number] = (len(data), f'"{number}"')
            return f'"{number}"'
        def complete_multipart(self, key, upload_id, parts):
            return ObjectMeta(key, sum(self.parts[n][0] for n, _ in parts), '"whole"')
        def abort_multipart(self, key, upload_id):
            pass

    crc32c_fn = crc32c
    path, size, part_size, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    before = peak_kib()
    result = upload_file(Sink(), path, "big", part_size=part_size, max_concurrency=concurrency)
    print(json.dumps({"before_kib": before, "after_kib": peak_kib(), "size": result.size, "parts": result.parts_sent}))
    """
)


def test_twenty_gib_upload_keeps_memory_bounded(tmp_path: Path):
    size, part_size, concurrency = 20 * 1024 * MiB, 16 * MiB, 4
    big = tmp_path / "sparse.bin"
    with open(big, "wb") as f:
        f.truncate(size)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(big), str(size), str(part_size), str(concurrency)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2], check=True,
    )
    measured = json.loads(out.stdout)
    assert measured["size"] == size and measured["parts"] == size // part_size
    growth = (measured["after_kib"] - measured["before_kib"]) * 1024
    bound = (concurrency + 2) * part_size + 64 * MiB
    assert growth < bound, f"peak RSS grew by {growth / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB)"
