"""`ferry device-upload`: what a device runs. It speaks only the gateway's HTTP API and
PUTs bytes straight to the presigned URLs it is given.

    scan FOLDER/RECORDING/files ─> checksums (one read; kept in FOLDER/.ferry-device-upload.json)
      ─> begin (the device's own transaction id, so a repeated begin is the same transaction)
      ─> PUT each missing file / part, streamed from disk ─> complete

The state file is written before the first request, so after a lost connection or a
killed process the same command asks the gateway what the store already holds and sends
only what is missing. It is removed once the transaction is completed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from storage_core.checksums import combine_parts, crc32c_of_stream
from storage_core.errors import FerryError
from storage_core.upload.manifest import scan_folder

STATE_FILE = ".ferry-device-upload.json"
MiB = 1024 * 1024
READ_CHUNK = 1 * MiB


class GatewayError(FerryError):
    """The gateway refused (4xx: `retryable` False) or could not be reached / failed (retryable)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status


@dataclass(frozen=True)
class DeviceUploadReport:
    transaction_id: str
    status: str
    files: int
    bytes: int
    pieces_sent: int  # single files and parts PUT by this run
    pieces_reused: int  # already in the store when this run looked (a resumed upload)
    bytes_sent: int
    event_id: str | None


class GatewayClient:
    """The gateway's HTTP API, one method per route. Errors become GatewayError."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.http.base_url}: {exc}", retryable=True) from exc
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        status = response.status_code
        raise GatewayError(f"gateway refused ({status}): {detail}", status=status, retryable=status >= 500)

    def me(self) -> str:
        return self._call("GET", "/v1/me")["device_id"]

    def begin(self, files: list[dict[str, Any]], transaction_id: str) -> dict[str, Any]:
        return self._call("POST", "/v1/uploads", {"files": files, "transaction_id": transaction_id})

    def status(self, transaction_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/uploads/{transaction_id}")

    def urls(self, transaction_id: str, part_crc32c: dict[str, list[int]]) -> dict[str, Any]:
        body = {"files": [{"path": p, "part_crc32c": c} for p, c in part_crc32c.items()]}
        return self._call("POST", f"/v1/uploads/{transaction_id}/urls", body)

    def complete(self, transaction_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/uploads/{transaction_id}/complete")

    def abort(self, transaction_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/uploads/{transaction_id}/abort")


# --- the manifest, with checksums computed once --------------------------------------------


def _checksums(path: Path, size: int, part_size: int | None) -> tuple[int, list[int] | None]:
    """(file CRC32C, part CRC32Cs or None) in one read of the file, in bounded memory."""
    with open(path, "rb") as stream:
        if part_size is None:
            return crc32c_of_stream(stream)[0], None
        parts, sizes = [], []
        for start in range(0, size, part_size):
            want = min(part_size, size - start)
            value, got = crc32c_of_stream(stream, length=want)
            if got != want:
                raise FerryError(f"{path} shrank while it was being read")
            parts.append(value)
            sizes.append(want)
        return combine_parts(list(zip(parts, sizes))), parts


def build_manifest(folder: Path, device: str, *, part_size: int, previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Manifest entries for FOLDER/RECORDING/files; checksums reused from `previous` for
    files whose size and mtime have not changed."""
    known = {f["path"]: f for f in (previous or {}).get("files", [])}
    files = []
    for entry in scan_folder(folder, device_id=device).entries:
        path = f"{device}/{entry.recording}/{entry.relative_path}"
        old = known.get(path)
        if old and (old["size"], old["mtime_ns"]) == (entry.size, entry.mtime_ns):
            files.append(old)
            continue
        multipart = entry.size > part_size
        crc, parts = _checksums(Path(entry.path), entry.size, part_size if multipart else None)
        item = {"path": path, "size": entry.size, "mtime_ns": entry.mtime_ns, "local": str(entry.path), "crc32c": crc}
        if multipart:
            item.update(part_size=part_size, part_crc32c=parts)
        files.append(item)
    return files


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, folder / STATE_FILE)


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


# --- sending bytes -----------------------------------------------------------------------------


class _Throttle:
    def __init__(self, bytes_per_second: int | None) -> None:
        self.rate, self.started, self.sent = bytes_per_second, time.monotonic(), 0

    def wait(self, n: int) -> None:
        if not self.rate:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def _stream(path: Path, start: int, length: int, throttle: _Throttle, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        left = length
        while left:
            block = handle.read(min(READ_CHUNK, left))
            if not block:
                raise FerryError(f"{path} shrank while it was being uploaded")
            left -= len(block)
            throttle.wait(len(block))
            on_bytes(len(block))
            yield block


def _put(http: httpx.Client, url: dict[str, Any], path: Path, start: int, throttle: _Throttle,
         on_bytes: Callable[[int], None]) -> None:
    headers = {**url["headers"], "Content-Length": str(url["size"])}
    try:
        response = http.put(url["url"], content=_stream(path, start, url["size"], throttle, on_bytes), headers=headers)
    except httpx.TransportError as exc:
        raise GatewayError(f"upload to object storage interrupted: {exc}", retryable=True) from exc
    if not response.is_success:
        retryable = response.status_code >= 500 or response.status_code == 403  # 403: the URL expired
        raise GatewayError(
            f"object storage refused {path.name} ({response.status_code}): {response.text[:200]}",
            status=response.status_code, retryable=retryable,
        )


# --- the command -------------------------------------------------------------------------------


def device_upload(
    folder: str | os.PathLike[str],
    *,
    gateway: str,
    token: str,
    device: str | None = None,
    part_size: int = 16 * MiB,
    limit_rate: int | None = None,
    attempts: int = 5,
    on_bytes: Callable[[int], None] | None = None,
) -> DeviceUploadReport:
    """Upload FOLDER/RECORDING/files through the gateway, resuming a previous run of the
    same folder. Retryable failures (connection lost, 5xx, an expired URL) re-ask the
    gateway what is stored and go on, up to `attempts` times; a refusal raises GatewayError."""
    root = Path(folder)
    client = GatewayClient(gateway, token)
    on_bytes = on_bytes or (lambda n: None)
    throttle = _Throttle(limit_rate)
    try:
        device = device or client.me()
        previous = _read_state(root)
        if previous and (previous.get("gateway"), previous.get("device")) != (gateway, device):
            previous = None
        files = build_manifest(root, device, part_size=part_size, previous=previous)
        same = previous and [(f["path"], f["crc32c"]) for f in previous["files"]] == [(f["path"], f["crc32c"]) for f in files]
        txn_id = previous["transaction_id"] if same else uuid.uuid4().hex
        _write_state(root, {"gateway": gateway, "device": device, "transaction_id": txn_id, "files": files})

        wire = [{k: f[k] for k in ("path", "size", "crc32c", "part_size", "part_crc32c") if k in f} for f in files]
        local = {f["path"]: Path(f["local"]) for f in files}
        sent = sent_bytes = 0
        reused: int | None = None
        with httpx.Client(timeout=300) as storage:
            for attempt in range(1, attempts + 1):
                try:
                    state = client.begin(wire, txn_id)  # repeatable: the same transaction, fresh URLs
                    if state["status"] == "aborted":  # aborted meanwhile (by the device or an operator): start anew
                        txn_id = uuid.uuid4().hex
                        _write_state(root, {"gateway": gateway, "device": device, "transaction_id": txn_id, "files": files})
                        state = client.begin(wire, txn_id)
                    if reused is None:
                        reused = sum(len(f["parts_present"]) if f["multipart"] else int(f["uploaded"]) for f in state["files"])
                    for f in state["files"]:
                        for url in f["urls"]:
                            number = url["part_number"]
                            start = 0 if number is None else (number - 1) * f["part_size"]
                            _put(storage, url, local[f["path"]], start, throttle, on_bytes)
                            sent, sent_bytes = sent + 1, sent_bytes + url["size"]
                    done = client.complete(txn_id)
                    break
                except GatewayError as exc:
                    if not exc.retryable or attempt == attempts:
                        raise
                    time.sleep(min(0.5 * 2 ** (attempt - 1), 10))
        (root / STATE_FILE).unlink(missing_ok=True)
        return DeviceUploadReport(
            transaction_id=txn_id, status=done["status"], files=done["files"], bytes=done["bytes"],
            pieces_sent=sent, pieces_reused=reused or 0, bytes_sent=sent_bytes, event_id=done.get("event_id"),
        )
    finally:
        client.close()


__all__ = ["DeviceUploadReport", "GatewayClient", "GatewayError", "STATE_FILE", "build_manifest", "device_upload"]
