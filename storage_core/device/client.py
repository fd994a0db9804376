"""`ferry device-upload`: what a device runs. It speaks only the gateway's HTTP API and
PUTs bytes straight to the presigned URLs it is given.

    scan FOLDER/RECORDING/files ─> checksums (one read; kept in FOLDER/.ferry-device-upload.json)
      ─> begin (the device's own transaction id, so a repeated begin is the same transaction)
      ─> PUT each missing file / part, streamed from disk, several at once ─> complete

Begin gives URLs for every missing part and for the first window of single files (the
gateway's `url_window`); the client asks for the next window, by path, as a PUT slot
frees once the window it holds is used up, so it holds one window of URLs at a time.

The state file is written before the first request, so after a lost connection or a
killed process the same command asks the gateway what the store already holds and sends
only what is missing. It is removed only once the gateway's account of the completed
transaction lists every declared file, with its size, as stored.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from storage_core.checksums import combine_parts, crc32c_of_stream
from storage_core.device.http import GatewayHttp
from storage_core.diskio import write_atomic
from storage_core.errors import ConfigError, FerryError, GatewayError
from storage_core.manifest import scan_folder
from storage_core.parts import DEFAULT_PART_SIZE, choose_part_size, split_parts
from storage_core.retry import backoff_delays

STATE_FILE = ".ferry-device-upload.json"
MiB = 1024 * 1024
READ_CHUNK = 1 * MiB
# PUTs in flight: one stream rarely fills a device's uplink when each part waits a round
# trip for its answer (AWS's S3 performance guidelines, too, spread a transfer over
# several connections)
DEFAULT_PARALLEL = 4


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


# what each answer must hold for the client to go on (a wrong URL, a proxy's page, a
# different version's answer fail here, as one line, instead of deep in the upload)
_STATE_KEYS = ("transaction_id", "status", "files")
_FILE_KEYS = ("path", "multipart", "uploaded", "urls")
_MULTIPART_KEYS = ("parts_present", "part_size")
_URL_KEYS = ("url", "headers", "size", "part_number")


class GatewayClient:
    """The gateway's upload routes, one method per route. Errors become GatewayError, and so
    does an answer that is not the gateway's (not JSON, or without the fields the client
    uses): storage_core.device.http reads every answer."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60) -> None:
        self.gateway = GatewayHttp(base_url, token, timeout=timeout)

    def close(self) -> None:
        self.gateway.close()

    def _state(self, path: str, answer: dict[str, Any], declared: set[str] | None = None) -> dict[str, Any]:
        """`answer` once it is a transaction state in the form the upload uses, naming only
        `declared` paths (when given)."""
        files = answer["files"]
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise self.gateway.unexpected(path, "files is not a list of objects")
        for f in files:
            missing = [k for k in _FILE_KEYS + (_MULTIPART_KEYS if f.get("multipart") else ()) if k not in f]
            if missing:
                raise self.gateway.unexpected(path, f"file {f.get('path')!r} has no {', '.join(missing)}")
            if not isinstance(f["urls"], list) or not all(isinstance(u, dict) for u in f["urls"]):
                raise self.gateway.unexpected(path, f"file {f['path']!r}: urls is not a list of objects")
            missing = sorted({k for u in f["urls"] for k in _URL_KEYS if k not in u})
            if missing:
                raise self.gateway.unexpected(path, f"file {f['path']!r}: a URL without {', '.join(missing)}")
            if declared is not None and f["path"] not in declared:
                raise self.gateway.unexpected(path, f"a path this device did not declare: {f['path']!r}")
        return answer

    def me(self) -> str:
        return self.gateway.call("GET", "/v1/me", keys=("device_id",))["device_id"]

    def begin(self, files: list[dict[str, Any]], transaction_id: str, *, replace: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"files": files, "transaction_id": transaction_id}
        if replace:
            body["replace"] = True
        answer = self.gateway.call("POST", "/v1/uploads", json=body, keys=_STATE_KEYS)
        return self._state("/v1/uploads", answer, {f["path"] for f in files})

    def status(self, transaction_id: str) -> dict[str, Any]:
        path = f"/v1/uploads/{transaction_id}"
        return self._state(path, self.gateway.call("GET", path, keys=_STATE_KEYS))

    def urls(self, transaction_id: str, part_crc32c: dict[str, list[int]] | None = None, *,
             paths: list[str] | None = None) -> dict[str, Any]:
        """Fresh URLs: for what is still missing (as begin gives them), or for the single
        files `paths` only (the next window; the answer lists just those)."""
        body: dict[str, Any] = {"files": [{"path": p, "part_crc32c": c} for p, c in (part_crc32c or {}).items()]}
        if paths is not None:
            body["paths"] = paths
        path = f"/v1/uploads/{transaction_id}/urls"
        answer = self.gateway.call("POST", path, json=body, keys=_STATE_KEYS)
        return self._state(path, answer, None if paths is None else set(paths))

    def complete(self, transaction_id: str) -> dict[str, Any]:
        return self.gateway.call("POST", f"/v1/uploads/{transaction_id}/complete", keys=("status", "files", "bytes"))

    def abort(self, transaction_id: str) -> dict[str, Any]:
        return self.gateway.call("POST", f"/v1/uploads/{transaction_id}/abort", keys=("status",))


# --- the manifest, with checksums computed once --------------------------------------------


def _checksums(path: Path, size: int, part_size: int | None) -> tuple[int, list[int] | None]:
    """(file CRC32C, part CRC32Cs or None) in one read of the file, in bounded memory."""
    with open(path, "rb") as stream:
        if part_size is None:
            return crc32c_of_stream(stream)[0], None
        parts, sizes = [], []
        for part in split_parts(size, part_size):
            value, got = crc32c_of_stream(stream, length=part.size)
            if got != part.size:
                raise FerryError(f"{path} shrank while it was being read")
            parts.append(value)
            sizes.append(part.size)
        return combine_parts(list(zip(parts, sizes))), parts


def _part_size(size: int, wanted: int, path: str) -> int:
    """The uploader's rule (storage_core.parts): `wanted` within S3's bounds, ≤ 10,000 parts."""
    try:
        return choose_part_size(size, part_size=wanted)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


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
        chosen = _part_size(entry.size, part_size, path)
        multipart = entry.size > chosen
        crc, parts = _checksums(Path(entry.path), entry.size, chosen if multipart else None)
        item = {"path": path, "size": entry.size, "mtime_ns": entry.mtime_ns, "local": str(entry.path), "crc32c": crc}
        if multipart:
            item.update(part_size=chosen, part_crc32c=parts)
        files.append(item)
    return files


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    write_atomic(folder / STATE_FILE, json.dumps(state).encode())


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


# --- sending bytes -----------------------------------------------------------------------------


class _Throttle:
    """The whole upload's byte budget (`--limit-rate`), shared by the PUTs in flight; it also
    reports each block to `on_bytes`, one call at a time."""

    def __init__(self, bytes_per_second: int | None, on_bytes: Callable[[int], None]) -> None:
        self.rate, self.started, self.sent = bytes_per_second, time.monotonic(), 0
        self.on_bytes = on_bytes
        self._lock = threading.Lock()

    def wait(self, n: int) -> None:
        with self._lock:
            self.sent += n
            self.on_bytes(n)
            ahead = self.sent / self.rate - (time.monotonic() - self.started) if self.rate else 0
        if ahead > 0:
            time.sleep(ahead)


class _Stopped(Exception):
    """A PUT given up because another PUT of the same attempt failed."""


def _stream(path: Path, start: int, length: int, throttle: _Throttle, stop: threading.Event) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        left = length
        while left:
            if stop.is_set():
                raise _Stopped()
            block = handle.read(min(READ_CHUNK, left))
            if not block:
                raise FerryError(f"{path} shrank while it was being uploaded")
            left -= len(block)
            throttle.wait(len(block))
            yield block


Piece = tuple[dict[str, Any], Path, int]  # (URL, local file, offset of the URL's bytes in it)


def _put_all(http: httpx.Client, pieces: Iterable[Piece], throttle: _Throttle, parallel: int,
             on_stored: Callable[[dict[str, Any]], None]) -> None:
    """PUT every piece, `parallel` at once, calling `on_stored(url)` (one call at a time) as
    each is stored. The next piece is taken from `pieces` only once a PUT slot is free (a
    lazy iterable that fetches URLs a window at a time holds just that window). The first
    failure, of a PUT or of `pieces`, stops the other PUTs (between two blocks) and is
    raised once none is running any more."""
    stop, lock = threading.Event(), threading.Lock()

    def send(url: dict[str, Any], path: Path, start: int) -> None:
        _put(http, url, path, start, throttle, stop)
        with lock:  # counted here, not as results are collected: those after a failure count too
            on_stored(url)

    running: set[Future[None]] = set()

    def settle(done: set[Future[None]]) -> None:
        for future in done:
            future.result()

    with ThreadPoolExecutor(parallel, thread_name_prefix="ferry-put") as pool:
        try:
            for url, path, start in pieces:
                if len(running) >= parallel:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    settle(done)
                running.add(pool.submit(send, url, path, start))
            settle(wait(running)[0])
        except BaseException:
            stop.set()  # the pool's exit waits for the PUTs still running
            raise


def _put(http: httpx.Client, url: dict[str, Any], path: Path, start: int, throttle: _Throttle,
         stop: threading.Event) -> None:
    """Stream the URL's bytes with exactly the headers the gateway signed into it (the store
    refuses a request whose length, type or condition differs from the signed ones)."""
    headers = dict(url["headers"])
    signed_length = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
    if signed_length is None:
        headers["Content-Length"] = str(url["size"])  # a gateway that does not sign it
    elif signed_length != str(url["size"]):
        raise GatewayError(f"unexpected answer from the gateway: a URL for {url['size']} bytes signed for {signed_length}")
    try:
        response = http.put(url["url"], content=_stream(path, start, url["size"], throttle, stop), headers=headers)
    except httpx.TransportError as exc:
        raise GatewayError(f"upload to object storage interrupted: {exc}", retryable=True) from exc
    if not response.is_success:
        retryable = response.status_code >= 500 or response.status_code == 403  # 403: the URL expired
        raise GatewayError(
            f"object storage refused {path.name} ({response.status_code}): {response.text[:200]}",
            status=response.status_code, retryable=retryable,
        )


def _offset(file: dict[str, Any], url: dict[str, Any]) -> int:
    """Where a URL's bytes start in the local file: 0 for a single PUT, else its part's
    offset (the `start` of that part in storage_core.parts.split_parts)."""
    return 0 if url["part_number"] is None else (url["part_number"] - 1) * file["part_size"]


def _pieces(client: GatewayClient, transaction_id: str, state: dict[str, Any], local: dict[str, Path]) -> Iterator[Piece]:
    """The pieces to PUT: those `state` (begin's answer) has URLs for, then the single
    files it has none for and that are still to be sent, a window of URLs at a time,
    asked for only once the pieces before them are under way."""
    for f in state["files"]:
        for url in f["urls"]:
            yield url, local[f["path"]], _offset(f, url)
    waiting = [f["path"] for f in state["files"]
               if not f["multipart"] and not f["urls"] and not f["uploaded"] and f.get("status") == "uploading"]
    window = state.get("url_window") or max(len(waiting), 1)
    for start in range(0, len(waiting), window):
        answer = client.urls(transaction_id, paths=waiting[start:start + window])
        for f in answer["files"]:
            for url in f["urls"]:
                yield url, local[f["path"]], _offset(f, url)


def _check_all_stored(state: dict[str, Any], files: list[dict[str, Any]]) -> None:
    """Trust no count: the gateway's own account of the transaction must hold every file
    this device declared, with its size, as stored (or skipped: identical bytes already
    stored), and nothing else. GatewayError (one line, not retryable) otherwise."""
    done = ("stored", "skipped")
    reported = {f["path"]: f for f in state.get("files", [])}
    wrong = []
    for f in files:
        got = reported.get(f["path"])
        if got is None:
            wrong.append(f"{f['path']} (not in the transaction)")
        elif got.get("size") != f["size"]:
            wrong.append(f"{f['path']} ({got.get('size')} bytes, not {f['size']})")
        elif got.get("status") not in done:
            wrong.append(f"{f['path']} ({got.get('status')})")
    extra = sorted(set(reported) - {f["path"] for f in files})
    wrong += [f"{p} (not in this device's manifest)" for p in extra]
    txn = state.get("transaction_id")
    if state.get("status") != "completed":
        raise GatewayError(f"the gateway reports transaction {txn} {state.get('status')}, not completed; "
                           f"the state file is kept: run again to resume", retryable=False)
    if wrong:
        raise GatewayError(
            f"the gateway reports transaction {txn} completed, but {len(wrong)} of {len(files)} file(s) "
            f"are not stored as this device declared them, e.g. {wrong[0]}; the state file is kept", retryable=False,
        )


# --- the command -------------------------------------------------------------------------------


def device_upload(
    folder: str | os.PathLike[str],
    *,
    gateway: str,
    token: str,
    device: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    limit_rate: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
    attempts: int = 5,
    on_bytes: Callable[[int], None] | None = None,
    replace: bool = False,
) -> DeviceUploadReport:
    """Upload FOLDER/RECORDING/files through the gateway, resuming a previous run of the
    same folder. A file larger than `part_size` goes in parts of `part_size` bytes, raised
    to S3's 5 MiB floor and scaled up to stay within 10,000 parts (the uploader's rule,
    storage_core.parts). `parallel` files and parts are PUT at once (memory: one READ_CHUNK each);
    `limit_rate` caps them together. Retryable failures (connection lost, 5xx, an expired
    URL) re-ask the gateway what is stored and go on, up to `attempts` times; a refusal
    raises GatewayError (a path already stored with other bytes among them, unless
    `replace` asks to store the new version in its place)."""
    if parallel < 1:
        raise ConfigError(f"parallel must be at least 1 (got {parallel})")
    root = Path(folder)
    client = GatewayClient(gateway, token)
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
        throttle = _Throttle(limit_rate, on_bytes or (lambda n: None))

        def stored(url: dict[str, Any]) -> None:
            nonlocal sent, sent_bytes
            sent, sent_bytes = sent + 1, sent_bytes + url["size"]

        delays = backoff_delays(attempts, base=0.5, cap=10.0)  # the project's one backoff: full jitter
        with httpx.Client(timeout=300) as storage:
            for attempt in range(1, attempts + 1):
                try:
                    state = client.begin(wire, txn_id, replace=replace)  # repeatable: the same transaction, fresh URLs
                    if state["status"] == "aborted":  # aborted meanwhile (by the device or an operator): start anew
                        txn_id = uuid.uuid4().hex
                        _write_state(root, {"gateway": gateway, "device": device, "transaction_id": txn_id, "files": files})
                        state = client.begin(wire, txn_id, replace=replace)
                    if reused is None:
                        reused = sum(len(f["parts_present"]) if f["multipart"] else int(f["uploaded"]) for f in state["files"])
                    _put_all(storage, _pieces(client, txn_id, state, local), throttle, parallel, on_stored=stored)
                    done = client.complete(txn_id)
                    _check_all_stored(client.status(txn_id), files)  # the state file stays unless all is stored
                    break
                except GatewayError as exc:
                    if not exc.retryable or attempt == attempts:
                        raise
                    time.sleep(delays[attempt - 1])
        (root / STATE_FILE).unlink(missing_ok=True)
        return DeviceUploadReport(
            transaction_id=txn_id, status=done["status"], files=done["files"], bytes=done["bytes"],
            pieces_sent=sent, pieces_reused=reused or 0, bytes_sent=sent_bytes, event_id=done.get("event_id"),
        )
    finally:
        client.close()


__all__ = [
    "DEFAULT_PARALLEL",
    "STATE_FILE",
    "DeviceUploadReport",
    "GatewayClient",
    "GatewayError",
    "build_manifest",
    "device_upload",
]
