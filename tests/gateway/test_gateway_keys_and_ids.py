"""Issue 14, finding 10 (rest) and empty files, over the real gateway, SeaweedFS and catalog:
keys a reader cannot see are refused at begin naming the path, the index and the code
point; a transaction id another device holds begins like a free one (ids are scoped per
device); an empty file is stored as an empty object, verified."""

from __future__ import annotations

import os

import pytest

from storage_core.catalog.queries import list_objects
from storage_core.catalog.transactions import get_transaction, list_transactions
from storage_core.checksums import crc32c
from storage_core.device.client import device_upload
from storage_core.upload.device import scoped_transaction_id
from tests.gateway.test_gateway import assert_nothing_stored, refused, single, upload_all, wait_for_events


@pytest.mark.parametrize("name, index, code_point", [
    ("a\r\nb.bin", 1, "U+000D"),
    ("bell\x07.bin", 4, "U+0007"),
    ("x\u202egnp.exe", 1, "U+202E"),  # RIGHT-TO-LEFT OVERRIDE
    ("\u2066isolate\u2069.bin", 0, "U+2066"),  # LEFT-TO-RIGHT ISOLATE
    ("zero\u200bwidth.bin", 4, "U+200B"),
    ("\ufeffbom.bin", 0, "U+FEFF"),
    ("line\u2028sep.bin", 4, "U+2028"),
    ("blank\u3164.bin", 5, "U+3164"),  # HANGUL FILLER: a letter that renders as nothing
])  # fmt: skip
def test_keys_with_invisible_characters_are_refused_naming_path_index_and_code_point(gateway, name, index, code_point):
    path = f"cam-1/run/{name}"
    data = b"look-alike"
    with gateway.http() as http:
        answer = http.post("/v1/uploads", json={"files": [single("cam-1/run/fine.bin", data), single(path, data)]})
    refused(answer, 422, f"path {path!r}")
    detail = answer.json()["detail"]
    assert f"{code_point} " in detail and f"at index {len('cam-1/run/') + index}" in detail, detail
    assert_nothing_stored(gateway)
    assert list_transactions(gateway.catalog) == []


def test_visible_unicode_names_are_accepted(gateway):
    data = b"unicode"
    with gateway.http() as http:
        answer = http.post("/v1/uploads", json={"files": [single("cam-1/Aufnahme-ü/日本語 ファイル.bin", data)]})
    assert answer.status_code == 201, answer.text


def test_a_transaction_id_another_device_holds_begins_like_a_free_one(gateway):
    """cam-2 cannot tell that cam-1 holds the id: its begin answers 201 like for a free id,
    and each device reaches only its own transaction under that id."""
    mine, theirs, fresh = os.urandom(100), os.urandom(200), os.urandom(300)
    taken, free = "a" * 32, "c" * 32
    with gateway.http() as cam1, gateway.http(gateway.other_token) as cam2:
        first = cam1.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", mine)], "transaction_id": taken})
        assert first.status_code == 201, first.text
        on_taken = cam2.post("/v1/uploads", json={"files": [single("cam-2/r/a.bin", theirs)], "transaction_id": taken})
        on_free = cam2.post("/v1/uploads", json={"files": [single("cam-2/r/b.bin", fresh)], "transaction_id": free})
        assert (on_taken.status_code, on_free.status_code) == (201, 201), (on_taken.text, on_free.text)
        assert on_taken.json()["transaction_id"] == taken and on_free.json()["transaction_id"] == free
        assert [f["path"] for f in on_taken.json()["files"]] == ["cam-2/r/a.bin"]
        again = cam2.post("/v1/uploads", json={"files": [single("cam-2/r/a.bin", theirs)], "transaction_id": taken})
        assert again.status_code == 201 and [f["path"] for f in again.json()["files"]] == ["cam-2/r/a.bin"]

        upload_all(on_taken.json(), {"cam-2/r/a.bin": theirs})
        done = cam2.post(f"/v1/uploads/{taken}/complete")
        assert done.status_code == 200 and done.json()["files"] == 1, done.text
        # cam-1's transaction under the same id is untouched and still its own
        status = cam1.get(f"/v1/uploads/{taken}").json()
        assert status["status"] == "uploading" and [f["path"] for f in status["files"]] == ["cam-1/r/a.bin"]
        upload_all(first.json(), {"cam-1/r/a.bin": mine})
        assert cam1.post(f"/v1/uploads/{taken}/complete").json()["status"] == "completed"
        unknown = cam2.get(f"/v1/uploads/{'b' * 32}")
        refused(unknown, 404, "no upload transaction")
    assert get_transaction(gateway.catalog, taken).device_id == "cam-1"
    scoped = scoped_transaction_id(gateway.catalog, "cam-2", taken)
    assert scoped != taken and get_transaction(gateway.catalog, scoped).device_id == "cam-2"
    assert sorted(o.key for o in list_objects(gateway.catalog)) == ["lake/cam-1/r/a.bin", "lake/cam-2/r/a.bin"]
    assert len(wait_for_events(gateway.emitter, 2)) == 2


def test_an_empty_file_is_stored_as_an_empty_object(gateway, tmp_path):
    folder = tmp_path / "device"
    (folder / "run-1").mkdir(parents=True)
    (folder / "run-1" / "empty.marker").write_bytes(b"")
    (folder / "run-1" / "data.bin").write_bytes(b"payload")
    report = device_upload(folder, gateway=gateway.url, token=gateway.token)
    assert report.status == "completed" and report.files == 2 and report.bytes == len(b"payload")
    stored = {o.key: o for o in list_objects(gateway.catalog)}
    assert stored["lake/cam-1/run-1/empty.marker"].size == 0
    assert stored["lake/cam-1/run-1/empty.marker"].crc32c == crc32c(b"") == 0
    assert gateway.store.head("lake/cam-1/run-1/empty.marker").size == 0
    assert gateway.store.get_range("lake/cam-1/run-1/data.bin", 0, 7) == b"payload"


def test_an_empty_file_declared_with_a_wrong_checksum_is_not_stored(gateway):
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [{"path": "cam-1/r/empty", "size": 0, "crc32c": 12345}]})
        assert state.status_code == 201, state.text
        url = state.json()["files"][0]["urls"][0]
        import httpx

        assert httpx.put(url["url"], content=b"", headers=url["headers"]).status_code >= 400  # the store checks the CRC
        refused(http.post(f"/v1/uploads/{state.json()['transaction_id']}/complete"), 409, "not uploaded yet")
    assert list(gateway.store.list()) == [] and list_objects(gateway.catalog) == []
