"""A landing folder holding rolling archives: the ones still being written are left out (listed
as ignored), the closed ones are ingested like any MCAP file."""

from __future__ import annotations

from pathlib import Path

from storage_core.manifest import scan_folder


def test_archives_still_being_written_are_listed_as_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "cam-1" / "drive"
    folder.mkdir(parents=True)
    for name in ("a-000001.mcap", "a-000002.mcap.open", "a-000001.mcap.recovering", ".ferry-archive.json"):
        (folder / name).write_bytes(b"x")
    scan = scan_folder(tmp_path)
    assert [(e.relative_path, e.modality) for e in scan.entries] == [("a-000001.mcap", "mcap")]
    assert sorted(p.name for p in scan.ignored) == [".ferry-archive.json", "a-000001.mcap.recovering", "a-000002.mcap.open"]
