"""`ferry stream append`: a device appends Arrow record batches to its telemetry stream
through the gateway, exactly once over a flaky link.

    files (Parquet, Arrow IPC, CSV), in order ─> batches of `batch_rows` rows (the same cut
    on every run) ─> one frame per batch: header (stream, epoch, first row offset, rows),
    body an Arrow IPC stream (zstd by default) ─> POST, a few consecutive frames per
    request, each acknowledged on its own, in order

A small state file remembers, per input file, the row offset it starts at, and the epoch of
this writer. It is written before a file's first append; a rerun (after a kill, a lost
link) asks the gateway for the committed end and sends only the batches past it. An append
whose acknowledgement was lost is sent again and acknowledged as a duplicate. A writer
without its state file starts a new epoch (the gateway then fences the old one) and appends
its files after the committed end.

pyarrow is imported when a file is read, not when this module is: a device that only
uploads recordings never loads it.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from storage_core.device.frame import Kind, decode_blocks, encode_frame
from storage_core.device.http import GatewayHttp
from storage_core.diskio import write_atomic
from storage_core.errors import (
    AppendDiverged,
    AppendOutOfRange,
    ConfigError,
    FerryError,
    GatewayError,
    SchemaRefused,
    StaleEpoch,
    StreamRefused,
)
from storage_core.retry import backoff_delays

DEFAULT_BATCH_ROWS = 5_000
# Appends in flight: those reaching the gateway while a commit runs go in its successor, one
# group, so the window is what makes groups large (half of it per group at a steady pace).
# 2,000,000 rows in appends of 5,000 on loopback (2 cores), 16 per request: a window of 64
# took 1.30-1.38 s, 128 took 1.11-1.21 s (32 took 2.28-2.33 s with one append a request).
# Memory: at most DEFAULT_INFLIGHT frames, and DEFAULT_INFLIGHT_BYTES of them and one
# request more (128 frames of 5,000 telemetry rows, zstd: ~6 MB).
DEFAULT_INFLIGHT = 128
DEFAULT_INFLIGHT_BYTES = 32 * 1024 * 1024
# Appends per request (`appends`): a request costs the device and the gateway ~3 ms of CPU
# whatever it carries (HTTP, the token check, a thread hop), as much as a 5,000-row batch's
# own work: 200,000 rows took 0.33-0.37 s one append per request, 0.24-0.26 s eight. Its
# bytes stay under half the gateway's body limit (16 MiB).
DEFAULT_PER_REQUEST = 16
DEFAULT_REQUEST_BYTES = 8 * 1024 * 1024
COMPRESSIONS = ("zstd", "lz4", "none")
_REFUSALS: dict[str, type[StreamRefused]] = {
    cls.reason: cls for cls in (AppendOutOfRange, AppendDiverged, StaleEpoch, SchemaRefused)
}


@dataclass(frozen=True)
class StreamAppendReport:
    stream: str  # DEVICE/NAME
    epoch: int
    committed_end: int
    batches_sent: int  # committed by this run
    duplicates: int  # acknowledged as already committed (a lost acknowledgement)
    rows_sent: int
    bytes_sent: int  # frame bytes of the committed batches


def _stream_refusal(answer: dict[str, Any], detail: str) -> StreamRefused | None:
    """A refusal naming a stream reason, as its StreamRefused class (with the stream's end)."""
    refusal = _REFUSALS.get(answer.get("reason"))
    if refusal is None:
        return None
    return refusal(detail, committed_end=answer.get("committed_end"), epoch=answer.get("epoch"))


class StreamClient:
    """The gateway's stream routes. Refusals with a stream reason become their StreamRefused
    class (carrying the committed end); other failures GatewayError (5xx and a lost link:
    retryable), as storage_core.device.http reads every answer."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 120) -> None:
        self.gateway = GatewayHttp(base_url, token, timeout=timeout, refusal=_stream_refusal)

    def close(self) -> None:
        self.gateway.close()

    def me(self) -> str:
        return self.gateway.call("GET", "/v1/me", keys=("device_id",))["device_id"]

    def show(self, device: str, name: str) -> dict[str, Any]:
        return self.gateway.call("GET", f"/v1/streams/{device}/{name}", keys=("epoch", "committed_end"))

    def list(self) -> list[dict[str, Any]]:
        return self.gateway.call("GET", "/v1/streams", keys=("streams",))["streams"]

    def read(self, device: str, name: str, *, columns: list[str] | None = None) -> Iterator[bytes]:
        """The stream's committed rows as an Arrow IPC stream, served in CRC32C blocks and
        verified block by block as they arrive (CorruptFrame names a bad block's offset)."""
        params = {"format": "framed", **({"columns": ",".join(columns)} if columns else {})}
        try:
            with self.gateway.http.stream("GET", f"/v1/streams/{device}/{name}/rows", params=params) as response:
                if not response.is_success:
                    response.read()
                    raise self.gateway.refused(response)
                yield from decode_blocks(response.iter_bytes())
        except httpx.TransportError as exc:
            raise GatewayError(f"reading {device}/{name} from the gateway was cut: {exc}", retryable=True) from exc

    def append(self, device: str, name: str, frame: bytes) -> dict[str, Any]:
        return self.gateway.call("POST", f"/v1/streams/{device}/{name}/append", keys=("result", "committed_end"),
                                 content=frame, headers={"Content-Type": "application/octet-stream"})

    def appends(self, device: str, name: str, frames: list[bytes]) -> list[dict[str, Any] | FerryError]:
        """Several appends in one request: each one's answer (as `append` returns it) or its
        refusal (as `append` raises it), in order. A failure of the whole request raises."""
        path = f"/v1/streams/{device}/{name}/appends"
        answers = self.gateway.call("POST", path, keys=("answers",), content=b"".join(frames),
                                    headers={"Content-Type": "application/octet-stream"})["answers"]
        if not isinstance(answers, list) or len(answers) != len(frames) or not all(isinstance(a, dict) for a in answers):
            raise self.gateway.unexpected(path, f"not {len(frames)} answers")
        return [answer if "result" in answer else self._refusal(path, answer) for answer in answers]

    def _refusal(self, path: str, answer: dict[str, Any]) -> FerryError:
        detail, status = answer.get("detail"), answer.get("status")
        if not isinstance(detail, str) or not isinstance(status, int):
            raise self.gateway.unexpected(path, "an answer with neither a result nor a refusal")
        return self.gateway.error_for(status, answer, detail)


# --- input files, cut the same way on every run ---------------------------------------------


def _file_batches(path: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=65_536)
    elif suffix in (".arrow", ".feather", ".ipc", ".arrows"):
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            except pa.ArrowInvalid:
                source.seek(0)
                yield from pa.ipc.open_stream(source)
    elif suffix in (".csv", ".tsv"):
        options = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        yield from pacsv.open_csv(path, parse_options=options)
    else:
        raise ConfigError(f"{path}: not a Parquet, Arrow IPC or CSV file (by its suffix)")


def cut_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    """The file's rows as tables of exactly `batch_rows` rows (the last one shorter),
    whatever the reader's own batch sizes; memory: about one batch."""
    import pyarrow as pa

    pending: list[Any] = []
    held = 0
    for batch in _file_batches(path):
        pending.append(batch)
        held += batch.num_rows
        while held >= batch_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_rows).combine_chunks()
            rest = table.slice(batch_rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks()


def encode_append(name: str, epoch: int, offset: int, table: Any, compression: str) -> bytes:
    """One append frame: the rows as an Arrow IPC stream (compressed buffers), framed."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    header = {"stream": name, "epoch": epoch, "offset": offset, "rows": table.num_rows}
    return encode_frame(Kind.APPEND, header, sink.getvalue())


# --- the state file --------------------------------------------------------------------------


def _identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(state).encode())


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def default_state_file(name: str) -> Path:
    return Path(f".ferry-stream-{name}.json")


# --- sending, a few appends in flight -------------------------------------------------------


@dataclass(frozen=True)
class _Append:
    offset: int
    rows: int
    frame: bytes


def _requests(items: Iterator[_Append], per_request: int, request_bytes: int) -> Iterator[list[_Append]]:
    """`items` cut into requests of up to `per_request` appends and `request_bytes` of frames
    (at least one append each), taking each item only when its request is asked for."""
    held: _Append | None = None
    while True:
        request: list[_Append] = []
        size = 0
        while len(request) < per_request:
            item = held if held is not None else next(items, None)
            held = None
            if item is None:
                break
            if request and size + len(item.frame) > request_bytes:
                held = item
                break
            request.append(item)
            size += len(item.frame)
        if not request:
            return
        yield request


def _acknowledged_in_order(requests: Iterator[list[_Append]], send: Callable[[list[bytes]], list[Any]], window: int,
                           *, window_bytes: int | None = None) -> Iterator[tuple[_Append, dict[str, Any]]]:
    """Send `requests` (each a list of appends, answered by `send` with one answer or
    refusal per append) while fewer than `window` appends and `window_bytes` of frames are
    in flight (so at most that and one request more; None: no byte bound), and yield each
    append with its answer in the order sent. An append refused as beyond the end while
    its predecessor was still in flight is sent again once the predecessor is acknowledged.
    The first failure is raised after the requests in flight have finished (none is sent again)."""
    queue: deque[tuple[list[_Append], Future[list[Any]]]] = deque()
    appends = held = 0  # appends and frame bytes in flight
    acknowledged_end: int | None = None  # the committed end the previous answer reported
    with ThreadPoolExecutor(window, thread_name_prefix="ferry-append") as pool:
        try:
            while True:
                while (appends < window and (not queue or window_bytes is None or held < window_bytes)
                       and (request := next(requests, None)) is not None):
                    queue.append((request, pool.submit(send, [item.frame for item in request])))
                    appends += len(request)
                    held += sum(len(item.frame) for item in request)
                if not queue:
                    return
                request, future = queue.popleft()
                appends -= len(request)
                held -= sum(len(item.frame) for item in request)
                for item, answer in zip(request, future.result()):
                    if isinstance(answer, AppendOutOfRange):
                        # refused while its predecessors were in flight: the end it was told is
                        # stale; once they are acknowledged up to its offset, it goes again
                        end_now = acknowledged_end if acknowledged_end is not None else answer.committed_end
                        if end_now != item.offset:
                            raise answer
                        (answer,) = send([item.frame])
                    if isinstance(answer, BaseException):
                        raise answer
                    acknowledged_end = answer["committed_end"]
                    yield item, answer
        finally:
            for _, future in queue:
                future.cancel()


# --- the command -----------------------------------------------------------------------------


def stream_append(
    files: list[str | os.PathLike[str]],
    *,
    stream: str,
    gateway: str,
    token: str,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    compression: str = "zstd",
    state_file: str | os.PathLike[str] | None = None,
    attempts: int = 5,
    inflight: int = DEFAULT_INFLIGHT,
    inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
    per_request: int = DEFAULT_PER_REQUEST,
    request_bytes: int = DEFAULT_REQUEST_BYTES,
) -> StreamAppendReport:
    """Append `files` in order to the device's stream `stream` (see the module docstring).
    Up to `per_request` consecutive appends (no more than `inflight`, and `request_bytes` of
    frames or one larger frame) go in one request. Up to `inflight` appends (and
    `inflight_bytes` of frames and one request more) are in flight at once, acknowledged in
    order (the gateway holds one that arrives before its predecessor for a moment; one it
    refused meanwhile is sent again once its predecessor is acknowledged). Retryable
    failures (lost link, 5xx) resend the same request, up to `attempts` times each;
    a refusal raises its StreamRefused (a fenced epoch, a refused schema) or GatewayError."""
    if min(batch_rows, inflight, inflight_bytes, per_request, request_bytes) < 1:
        raise ConfigError(f"batch rows, appends and bytes in flight and per request must be at least 1 (got "
                          f"{batch_rows}, {inflight}, {inflight_bytes}, {per_request}, {request_bytes})")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)} (got {compression!r})")
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
    state_path = Path(state_file) if state_file is not None else default_state_file(stream)
    client = StreamClient(gateway, token)
    try:
        device = client.me()
        remote = client.show(device, stream)
        state = _read_state(state_path)
        if not state or (state.get("gateway"), state.get("device"), state.get("stream")) != (gateway, device, stream):
            # a writer without state: a new epoch fences any older writer; its rows go after the end
            state = {"gateway": gateway, "device": device, "stream": stream, "epoch": remote["epoch"] + 1,
                     "next_offset": remote["committed_end"], "files": []}
        known = {f["path"]: f for f in state["files"]}
        end = remote["committed_end"]
        sent = duplicates = rows_sent = bytes_sent = 0
        delays = backoff_delays(attempts, base=0.5, cap=10.0)

        def send(frames: list[bytes]) -> list[dict[str, Any] | FerryError]:
            for attempt in range(1, attempts + 1):
                try:
                    return client.appends(device, stream, frames)
                except GatewayError as exc:
                    if not exc.retryable or attempt == attempts:
                        raise
                    time.sleep(delays[attempt - 1])
            raise AssertionError("unreachable")

        for path in paths:
            ident = _identity(path)
            entry = known.get(ident["path"])
            if entry is not None and (entry["size"], entry["mtime_ns"]) != (ident["size"], ident["mtime_ns"]):
                raise ConfigError(f"{path} changed since it was appended to {device}/{stream}; give it another name")
            if entry is None:
                entry = {**ident, "first_offset": state["next_offset"], "rows": None}
                state["files"].append(entry)
                known[ident["path"]] = entry
                _write_state(state_path, state)  # the file's offset is fixed before its first append
            if entry["rows"] is not None and entry["first_offset"] + entry["rows"] <= end:
                continue  # committed by an earlier run
            cut = {"end": entry["first_offset"]}  # where the file's rows end, once all are cut

            def pending() -> Iterator[_Append]:
                for table in cut_batches(path, batch_rows):
                    offset = cut["end"]
                    cut["end"] += table.num_rows
                    if cut["end"] <= end:
                        continue
                    if offset < end:  # a batch cut differently by an earlier run: only its new rows
                        table, offset = table.slice(end - offset), end
                    yield _Append(offset, table.num_rows, encode_append(stream, state["epoch"], offset, table, compression))

            requests = _requests(pending(), min(per_request, inflight), request_bytes)
            for item, answer in _acknowledged_in_order(requests, send, inflight, window_bytes=inflight_bytes):
                if answer["result"] == "duplicate":
                    duplicates += 1
                else:
                    sent, rows_sent, bytes_sent = sent + 1, rows_sent + item.rows, bytes_sent + len(item.frame)
                end = max(end, answer["committed_end"])
            offset = cut["end"]
            entry["rows"] = offset - entry["first_offset"]
            state["next_offset"] = max(state["next_offset"], offset)
            _write_state(state_path, state)
        return StreamAppendReport(f"{device}/{stream}", state["epoch"], end, sent, duplicates, rows_sent, bytes_sent)
    finally:
        client.close()


__all__ = [
    "COMPRESSIONS",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_INFLIGHT",
    "DEFAULT_INFLIGHT_BYTES",
    "DEFAULT_PER_REQUEST",
    "DEFAULT_REQUEST_BYTES",
    "StreamAppendReport",
    "StreamClient",
    "cut_batches",
    "default_state_file",
    "encode_append",
    "stream_append",
]
