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
    ("in/r1/rec/back\\slash.bin", "contains a NUL byte or a backslash"),
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
