"""scan_objects over listings SeaweedFS cannot produce (it normalises keys), from a fake
lister: other S3 servers keep keys such as `a//b` or `..` verbatim."""

from __future__ import annotations

import pytest

from storage_core.errors import ConfigError
from storage_core.stores.base import ObjectMeta
from storage_core.manifest import scan_objects


class Listing:
    uri = "s3://landing"

    def __init__(self, *keys: str) -> None:
        self.keys = keys

    def list(self, prefix: str = ""):
        return [ObjectMeta(key, 10, f'"{n}"') for n, key in enumerate(self.keys) if key.startswith(prefix)]


@pytest.mark.parametrize("key, reason", [
    ("in/r1/rec/../../etc/passwd", "'..' segments are not allowed"),
    ("in/r1/rec//double.bin", "empty path segment"),
    ("in/r1/rec/back\\slash.bin", "contains a backslash"),
])  # fmt: skip
def test_unsafe_keys_are_refused_naming_the_object(key: str, reason: str):
    with pytest.raises(ConfigError) as info:
        scan_objects(Listing("in/r1/rec/ok.bin", key), "in")
    assert str(info.value) == f"cannot ingest s3://landing/in: s3://landing/{key}: {reason}"


def test_entries_carry_the_object_identity_and_a_given_device():
    scan = scan_objects(Listing("in/rec/a.mcap", "in/rec/v/0001.h264", "in/.tmp/x", "inbox/rec/y.bin"), "in/",
                        device_id="r7")
    assert [(e.path, e.device_id, e.recording, e.relative_path, e.modality, e.source_etag) for e in scan.entries] == [
        ("s3://landing/in/rec/a.mcap", "r7", "rec", "a.mcap", "mcap", '"0"'),
        ("s3://landing/in/rec/v/0001.h264", "r7", "rec", "v/0001.h264", "video", '"1"'),
    ]
    assert scan.ignored == ["s3://landing/in/.tmp/x"] and all(e.is_object and e.mtime_ns is None for e in scan.entries)


def test_an_unsafe_key_holds_back_its_recording_and_the_others_are_scanned():
    listing = Listing("in/r1/good/a.bin", "in/r1/bad/ok.bin", "in/r1/bad/x//y.bin", "in/r1/bad/z\\w.bin",
                      "in/r2/good/b.bin", "in/r2/stray.bin", "in/top.bin")
    with pytest.raises(ConfigError, match=r"x//y.bin: empty path segment \(and 3 more problem"):
        scan_objects(listing, "in")  # by default, any problem refuses the scan
    scan = scan_objects(listing, "in", hold_back=True)
    assert [(e.device_id, e.recording, e.relative_path) for e in scan.entries] == [
        ("r1", "good", "a.bin"), ("r2", "good", "b.bin"),
    ]
    assert [(h.device_id, h.recording, h.path, len(h.problems)) for h in scan.held_back] == [
        ("r1", "bad", "s3://landing/in/r1/bad", 2),
        ("r2", None, "s3://landing/in/r2/stray.bin", 1),
        (None, None, "s3://landing/in/top.bin", 1),
    ]
    assert str(scan.held_back[0]) == (
        "r1/bad: s3://landing/in/r1/bad/x//y.bin: empty path segment (and 1 more problem(s))"
    )
    assert str(scan.held_back[1]).startswith("s3://landing/in/r2/stray.bin: not inside a recording folder")


def test_with_a_device_given_a_file_beside_the_recordings_is_held_back_alone():
    scan = scan_objects(Listing("in/rec/a.bin", "in/loose.bin"), "in", device_id="r7", hold_back=True)
    assert [e.relative_path for e in scan.entries] == ["a.bin"]
    assert [(h.device_id, h.recording, h.path) for h in scan.held_back] == [("r7", None, "s3://landing/in/loose.bin")]
