"""Device uploads through presigned URLs: a device with no storage credentials stores a
whole manifest under its own prefix, and the server side verifies before anything counts.

    begin_device_upload ─> device PUTs files / parts to presigned URLs ─> complete_device_upload
         │   (manifest checked; multipart uploads created and            │ (sizes from HEAD / ListParts,
         │    their ids recorded before any URL is handed out)           │
         ├─> device_upload_urls (the next window of single-file URLs)   │  CRC32C; one DB transaction:
         └─> device_upload_status (what is present; fresh URLs) ─────────┘  items stored, transaction
                                                                            completed, outbox row)
    abort_device_upload: transaction aborted first, then multipart uploads aborted,
                         unverified objects deleted and the single-PUT URLs issued fenced.

Begin records the transaction (items `pending`), creates the multipart uploads, then
records every item `uploading` with its upload id in one database transaction: a crash
leaves either items complete refuses (a repeated begin finishes them; uploads created
meanwhile are recorded by no open transaction, and reconcile aborts them) or all of them
accounted for. Complete and abort take the transaction's row lock and re-check its state
before committing, so a race between them ends as one or the other, never a mix; begins
and completes of one transaction (from any gateway replica) take turns from their start.

A device declares, per file, its size and CRC32C; a multipart file also declares its part
size and every part's CRC32C (they must combine to the file's CRC32C; begin records them).
Every URL is signed with the checksum and the Content-Length it must carry, so the store
itself refuses other bytes and other sizes; part URLs only ever carry the recorded part
checksums, which is why completion can trust the parts once ListParts shows the planned
sizes. No URL can write a final key: a single file goes to its staging key
(storage_core.upload.staging; its URL also signs `Content-Type: application/octet-stream`
and `If-None-Match: *`, so it writes once), a part to its multipart upload, which dies at
complete or abort. Complete puts verified bytes in place itself.

One replacement rule for single and multipart files: a path the catalog records as stored
with other bytes is refused at begin (409 naming it, nothing recorded) unless the device
declares `replace`; a replacement is put in place only over the recorded version, after its
new bytes are verified, and the catalog records the new version. Identical bytes are
skipped.

On a verification failure at complete, every object of the transaction that is not
recorded as stored is deleted, its multipart uploads aborted, and the transaction aborted:
nothing unverified is ever recorded or left behind. No URL writes once its transaction
closed: a part URL's multipart upload is gone, and a single-PUT URL's staging key holds an
object until the URL has expired (the verified staged copy after complete, a 0-byte marker
after abort; storage_core.upload.staging says what that costs). Single-file URLs go out a
window at a time (`url_window`: begin and the status give the first missing ones, the
device asks device_upload_urls for the next by path), each item recorded `url_issued`
under the transaction's lock before its URL is signed: an abort fences exactly those
staging keys, so its cost follows what was handed out, not the manifest's size.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import NoReturn, TypeVar

from storage_core.catalog import transactions as records
from storage_core.catalog.db import Catalog
from storage_core.catalog.locks import named_lock
from storage_core.catalog.models import (
    DONE_ITEM_STATES,
    OPEN_TRANSACTION_STATES,
    ItemStatus,
    SkipReason,
    SourceKind,
    TransactionStatus,
)
from storage_core.catalog.transactions import CompletedUpload, VerifiedItem
from storage_core.catalog.views import ItemInfo, TransactionInfo
from storage_core.checksums import combine_parts, crc32c_of_stream, to_header, to_hex
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import (
    AbortFailed,
    CatalogConflict,
    CatalogUnavailable,
    FerryError,
    IntegrityError,
    InvalidKey,
    ManifestRefused,
    ObjectNotFound,
    PreconditionFailed,
    TransactionStateError,
    UnknownUpload,
    UploadIncomplete,
    UploadNotFound,
    one_line,
)
from storage_core.keys import StorageUri, parse_uri, validate_key
from storage_core.stores.base import DeleteMany, ObjectMeta, ObjectStore, StoredPart
from storage_core.stores.lookup import MAX_WORKERS as LOOKUP_WORKERS, find_objects
from storage_core.stores.registry import open_store
from storage_core.manifest import ManifestEntry, modality_of
from storage_core.parts import MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, split_parts
from storage_core.upload.staging import fence, staging_key

log = logging.getLogger(__name__)
ORIGINATION = "device gateway"
# the one content type of a device's objects: signed into every single-PUT URL (a device
# cannot make the store serve its bytes as, say, text/html)
CONTENT_TYPE = "application/octet-stream"
_TRANSACTION_ID = re.compile(r"[0-9a-f]{32}")
GiB = 1024**3
T, R = TypeVar("T"), TypeVar("R")


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 10_000
    max_total_bytes: int = 10 * 1024 * GiB
    max_file_bytes: int = MAX_OBJECT_SIZE
    max_single_put_bytes: int = 5 * GiB  # S3's PutObject ceiling; above it a file must go multipart
    min_part_size: int = MIN_PART_SIZE  # S3 refuses smaller parts (but the last) at completion


@dataclass(frozen=True)
class DeviceFile:
    """One file as a device declares it. `path` is `DEVICE/RECORDING/relative/path`."""

    path: str
    size: int
    crc32c: int
    part_size: int | None = None  # set (with part_crc32c) for a multipart upload
    part_crc32c: tuple[int, ...] | None = None
    replace: bool = False  # may replace a stored version of the path with other bytes


@dataclass(frozen=True)
class UploadUrl:
    url: str
    method: str
    headers: dict[str, str]
    part_number: int | None = None  # None for a single PUT
    size: int | None = None  # bytes this URL takes


@dataclass(frozen=True)
class FileState:
    path: str
    uri: str
    size: int
    status: str  # the item status: uploading, stored, skipped, aborted, failed
    multipart: bool
    part_size: int | None
    parts_present: tuple[int, ...]  # part numbers the store holds now (multipart only)
    uploaded: bool  # every byte is in the store (a single object present, or every part)
    urls: tuple[UploadUrl, ...] = ()  # for what is still missing, when asked for


@dataclass(frozen=True)
class DeviceUploadState:
    transaction_id: str
    device_id: str
    status: str
    expires_in: int
    files: tuple[FileState, ...] = field(default_factory=tuple)
    # the most single-file URLs one answer carries: a device asks for those of its other
    # files with up to this many paths at a time (device_upload_urls)
    url_window: int | None = None


# --- the manifest (pure) ------------------------------------------------------------------


def _crc_value(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise ManifestRefused(f"{where}: a CRC32C is an integer in [0, 2**32)")
    return value


def check_manifest(device_id: str, files: list[DeviceFile], limits: UploadLimits) -> list[ManifestEntry]:
    """The manifest as transaction entries, or ManifestRefused naming the first problem."""
    if not files:
        raise ManifestRefused("the manifest lists no files")
    if len(files) > limits.max_files:
        raise ManifestRefused(f"the manifest lists {len(files)} files; the limit is {limits.max_files}", reason="too_large")
    total = sum(f.size for f in files if isinstance(f.size, int))
    if total > limits.max_total_bytes:
        raise ManifestRefused(
            f"the manifest declares {total} bytes; the limit is {limits.max_total_bytes}", reason="too_large"
        )
    entries, seen = [], set()
    for f in files:
        try:
            validate_key(f.path)
        except InvalidKey as exc:
            raise ManifestRefused(f"path {f.path!r}: {exc.reason}") from None
        device, *rest = f.path.split("/")
        if device != device_id:
            raise ManifestRefused(f"path {f.path!r} is outside this device's prefix {device_id}/", reason="forbidden")
        if len(rest) < 2:
            raise ManifestRefused(f"path {f.path!r}: expected {device_id}/RECORDING/FILE")
        if f.path in seen:
            raise ManifestRefused(f"path {f.path!r} is listed twice")
        seen.add(f.path)
        if not isinstance(f.size, int) or f.size < 0:
            raise ManifestRefused(f"{f.path}: size must be a non-negative integer")
        if f.size > limits.max_file_bytes:
            raise ManifestRefused(f"{f.path}: {f.size} bytes; the per-file limit is {limits.max_file_bytes}", reason="too_large")
        crc = _crc_value(f.crc32c, f.path)
        if f.part_crc32c is None and f.part_size is None:
            if f.size > limits.max_single_put_bytes:
                raise ManifestRefused(f"{f.path}: {f.size} bytes is too large for one PUT; declare parts")
        else:
            _check_parts(f, limits)
        recording, relative = rest[0], "/".join(rest[1:])
        entries.append(
            ManifestEntry(
                path=PurePosixPath(f.path),
                device_id=device_id,
                recording=recording,
                relative_path=relative,
                size=f.size,
                mtime_ns=0,
                modality=modality_of(relative),
                crc32c=crc,
            )
        )
    return entries


def _check_parts(f: DeviceFile, limits: UploadLimits) -> None:
    if f.part_size is None or f.part_crc32c is None:
        raise ManifestRefused(f"{f.path}: a multipart file declares both part_size and part_crc32c")
    if f.size == 0:
        raise ManifestRefused(f"{f.path}: an empty file has no parts; send it as one PUT")
    if not isinstance(f.part_size, int) or not limits.min_part_size <= f.part_size <= MAX_PART_SIZE:
        raise ManifestRefused(f"{f.path}: part_size must be between {limits.min_part_size} and {MAX_PART_SIZE} bytes")
    count = -(-f.size // f.part_size)
    if count > MAX_PARTS:
        raise ManifestRefused(f"{f.path}: {count} parts; at most {MAX_PARTS}")
    check_part_checksums(f.path, f.size, f.crc32c, f.part_size, list(f.part_crc32c))


def part_sizes(size: int, part_size: int) -> list[int]:
    """The sizes of the parts a device cut its file into (storage_core.parts.split_parts, as the client does)."""
    return [part.size for part in split_parts(size, part_size)]


def check_part_checksums(path: str, size: int, crc: int, part_size: int, part_crcs: list[int]) -> None:
    """Part CRC32Cs must be one per planned part and combine to the file's CRC32C."""
    sizes = part_sizes(size, part_size)
    if len(part_crcs) != len(sizes):
        raise ManifestRefused(f"{path}: {len(sizes)} parts of {part_size} bytes, but {len(part_crcs)} part checksums")
    values = [_crc_value(v, f"{path} part {n}") for n, v in enumerate(part_crcs, 1)]
    if combine_parts(list(zip(values, sizes))) != crc:
        raise ManifestRefused(f"{path}: the part checksums do not combine to the file's CRC32C {to_hex(crc)}")


# --- storage helpers ----------------------------------------------------------------------


def require_presign(destination: StorageUri, settings: FerrySettings | None = None) -> None:
    """Raise Unsupported unless the destination store has the Presign capability (an S3
    store; a local folder has none)."""
    from storage_core.errors import Unsupported
    from storage_core.stores.base import Presign

    store, _ = open_store(destination, settings or load_settings())
    if not isinstance(store, Presign):
        raise Unsupported(f"{destination.store_uri} cannot presign URLs; use an S3 store")


def _present_parts(store: ObjectStore, key: str, upload_id: str) -> dict[int, StoredPart] | None:
    """{part number: part} the store holds, or None when the upload no longer exists."""
    try:
        return {p.part_number: p for p in store.list_parts(key, upload_id)}  # a repeated part: the last wins
    except (ObjectNotFound, UploadNotFound):
        return None


def _replaced_versions(catalog: Catalog, store_uri: str, files: list[tuple[str, str, int, int]],
                       declared: dict[str, DeviceFile]) -> dict[str, str]:
    """{key: ETag of the stored version} for the (path, key, size, CRC32C) `files` whose path
    is stored with other bytes: the one replacement rule, for single and multipart files
    alike. Such a file is refused (TransactionStateError naming its path) unless the
    device declared `replace`; identical bytes are not a replacement (begin skips them)."""
    stored = records.stored_versions(catalog, store_uri, [key for _, key, _, _ in files])
    replaced, refused = {}, []
    for path, key, size, crc in files:
        version = stored.get(key)
        if version is None or (version.size, version.crc32c) == (size, crc):
            continue
        if not declared[path].replace:
            refused.append(path)
        replaced[key] = version.etag
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise TransactionStateError(f"{refused[0]} is already stored with other bytes{more}; "
                                    f"declare replace to store the new version in its place")
    return replaced
def scoped_transaction_id(catalog: Catalog, device_id: str, transaction_id: str) -> str:
    """The catalog id of what the device calls `transaction_id`. Ids a device chooses are
    scoped to the device: the id itself unless another device's (or an ingest's)
    transaction holds it, then one derived from the device and the id. So a device can
    never tell a taken id from a free one (both begin, 201), nor reach another's."""
    owner = records.transaction_owner(catalog, transaction_id)
    if owner is None or (owner.device_id == device_id and owner.origination == ORIGINATION):
        return transaction_id
    return hashlib.sha256(f"{device_id}/{transaction_id}".encode()).hexdigest()[:32]


def _check_owner(catalog: Catalog, device_id: str, transaction_id: str) -> tuple[str, records.TransactionOwner]:
    """The catalog id of the device's own transaction `transaction_id` and its owner row
    (reading no item); UnknownUpload when the device has none by that id."""
    scoped = scoped_transaction_id(catalog, device_id, transaction_id)
    owner = records.transaction_owner(catalog, scoped)
    if owner is None or owner.device_id != device_id or owner.origination != ORIGINATION:
        raise UnknownUpload(f"no upload transaction {transaction_id!r} for device {device_id}")
    return scoped, owner


def _own(catalog: Catalog, device_id: str, transaction_id: str) -> TransactionInfo:
    """The device's own transaction `transaction_id`, with its items (its `id` is the
    catalog's); UnknownUpload when the device has none by that id."""
    txn = records.find_transaction(catalog, scoped_transaction_id(catalog, device_id, transaction_id))
    if txn is None or txn.device_id != device_id or txn.origination != ORIGINATION:
        raise UnknownUpload(f"no upload transaction {transaction_id!r} for device {device_id}")
    return txn


# --- begin / status ------------------------------------------------------------------------


def begin_device_upload(
    catalog: Catalog,
    device_id: str,
    files: list[DeviceFile],
    *,
    destination: StorageUri,
    limits: UploadLimits = UploadLimits(),
    expires_in: int = 900,
    transaction_id: str | None = None,
    url_window: int | None = None,
    settings: FerrySettings | None = None,
) -> DeviceUploadState:
    """Check the manifest, begin the transaction, create the multipart uploads (each id
    recorded before any URL exists) and return URLs for every part to send and for the
    first `url_window` single files (default `settings.url_window`; the device asks for
    the others with device_upload_urls). Two steps, each
    one database transaction: the transaction and its items `pending`, then every item
    `uploading` with its upload id (all or none). A crash between them leaves items a
    complete refuses and a repeated begin finishes. Nothing is recorded when the manifest
    is refused; a destination another transaction is uploading aborts this one
    (TransactionStateError). With the device's own `transaction_id`, a
    repeated begin (the answer was lost) returns the same transaction with fresh URLs; one
    sent while the first still runs (through another gateway replica) waits its turn
    (`_transaction_turn`, as complete does) and then answers so too."""
    settings = settings or load_settings()
    entries = check_manifest(device_id, files, limits)
    declared = {f.path: f for f in files}
    crcs = {p: list(f.part_crc32c) for p, f in declared.items() if f.part_crc32c is not None}
    shown = transaction_id  # what the device calls it; the catalog's may differ (scoped_transaction_id)
    if transaction_id is not None:
        if not _TRANSACTION_ID.fullmatch(transaction_id):
            raise ManifestRefused(f"transaction id {transaction_id!r}: expected 32 lowercase hex digits")
        transaction_id = scoped_transaction_id(catalog, device_id, transaction_id)
    with nullcontext() if transaction_id is None else _transaction_turn(catalog, transaction_id, shown, settings):
        if transaction_id is not None:
            existing = records.find_transaction(catalog, transaction_id)
            if existing is not None:  # a repeated begin (the device lost the answer): the same transaction
                if sorted(i.source_path for i in existing.items) != sorted(declared):
                    raise TransactionStateError(f"transaction {transaction_id} was begun with a different manifest")
                if existing.status in OPEN_TRANSACTION_STATES:  # a begin that died before its second step
                    _start_uploads(catalog, existing, declared, settings)
                return device_upload_status(catalog, device_id, shown, part_crc32c=crcs,
                                            with_urls=existing.status in OPEN_TRANSACTION_STATES,
                                            expires_in=expires_in, url_window=url_window, settings=settings)
        _replaced_versions(catalog, destination.store_uri,  # refused before anything is recorded
                           [(f.path, records.destination_key(destination, e), f.size, f.crc32c)
                            for f, e in zip(files, entries)], declared)
        try:
            txn = records.begin_transaction(catalog, entries, destination=destination, origination=ORIGINATION,
                                            source_kind=SourceKind.DEVICE, device_id=device_id,
                                            transaction_id=transaction_id)
        except CatalogConflict:  # the same id begun concurrently (by a caller that takes no turn): retry begin
            raise TransactionStateError(f"transaction {transaction_id} is being begun; retry") from None
        busy = [i for i in txn.items if i.skip_reason == SkipReason.BUSY]
        if busy:
            abort_device_upload(catalog, device_id, txn.id, reason=f"not started: {busy[0].uri} {busy[0].error}",
                                settings=settings)
            raise TransactionStateError(f"{busy[0].uri} is {busy[0].error}")
        try:
            _start_uploads(catalog, txn, declared, settings)
            return device_upload_status(catalog, device_id, shown or txn.id, part_crc32c=crcs, with_urls=True,
                                        expires_in=expires_in, url_window=url_window, settings=settings)
        except BaseException:
            abort_device_upload(catalog, device_id, txn.id, reason="begin failed", settings=settings)
            raise


@contextmanager
def _transaction_turn(catalog: Catalog, scoped: str, shown: str, settings: FerrySettings) -> Iterator[None]:
    """One begin or complete of a device transaction at a time, across gateway replicas:
    the transaction's named lock in the catalog (storage_core.catalog.locks), waited for at
    most FERRY_CATALOG_TIMEOUT, then CatalogUnavailable (the gateway answers 503 with
    Retry-After, and the device client retries)."""
    with named_lock(catalog, f"transaction:{scoped}", timeout=settings.catalog_timeout) as held:
        if not held:
            raise CatalogUnavailable(f"transaction {shown} is busy with another request of its device; retry")
        yield


def _start_uploads(catalog: Catalog, txn: TransactionInfo, declared: dict[str, DeviceFile],
                   settings: FerrySettings) -> None:
    """Begin's second step: create a multipart upload for each pending multipart item, then
    record them all, with every pending item uploading, in one database transaction. Until
    that commits the items stay `pending` (complete refuses them; a repeated begin runs this
    step again), and the uploads created here are recorded by no open transaction, so a
    crash leaves them to reconcile, which aborts such orphans. Uploads a failure or a
    concurrent begin left unrecorded are aborted here."""
    pending = [i for i in txn.items if i.status == ItemStatus.PENDING.value]
    if not pending:
        return
    replaced = _replaced_versions(catalog, pending[0].store_uri,
                                  [(i.source_path, i.key, i.size, i.crc32c) for i in pending], declared)
    stores: dict[str, ObjectStore] = {}
    planned: list[records.DeviceItemUpload] = []
    recorded = False
    try:
        for info in pending:
            f = declared[info.source_path]
            upload_id = None
            if f.part_crc32c is not None:
                if info.store_uri not in stores:
                    stores[info.store_uri], _ = open_store(info.store_uri, settings)
                upload_id = stores[info.store_uri].create_multipart(info.key)
            planned.append(records.DeviceItemUpload(info.id, upload_id, f.part_size, f.part_crc32c,
                                                    replaced.get(info.key)))
        recorded = records.mark_items_uploading(catalog, txn.id, planned)
    finally:
        if not recorded:
            by_id = {i.id: i for i in pending}
            for p in (p for p in planned if p.upload_id is not None):
                item = by_id[p.item_id]
                try:
                    stores[item.store_uri].abort_multipart(item.key, p.upload_id)
                except FerryError as exc:  # an orphan now: reconcile aborts it
                    log.warning("could not abort unrecorded upload %s of %s: %s", p.upload_id, item.uri, one_line(exc))


def device_upload_status(
    catalog: Catalog,
    device_id: str,
    transaction_id: str,
    *,
    part_crc32c: dict[str, list[int]] | None = None,
    with_urls: bool = False,
    expires_in: int = 900,
    url_window: int | None = None,
    settings: FerrySettings | None = None,
) -> DeviceUploadState:
    """What the store holds for each file, from the store itself: single files by one LIST
    of the transaction's staging folder (storage_core.stores.lookup; not one HEAD per file),
    multipart files by ListParts, a bounded pool at a time. With `with_urls`, fresh URLs for
    what is missing, each signed with everything its request must carry (UploadUrl.headers,
    sent exactly): every missing part's PUT, with the part CRC32C recorded at begin and its
    Content-Length; and the first `url_window` missing single files' PUTs (default
    `settings.url_window`), recorded as issued before they are signed (an abort fences
    their staging keys; refused once the transaction closed: TransactionStateError), each
    to its staging key with its CRC32C, Content-Length, Content-Type and `If-None-Match: *`
    (written once, never replaced); URLs for a transaction no longer open are refused
    (TransactionStateError). (A transaction begun before part checksums were recorded
    takes them from `part_crc32c`, checked against the file's CRC32C.)"""
    settings = settings or load_settings()
    url_window = url_window or settings.url_window
    part_crc32c = part_crc32c or {}
    txn = _own(catalog, device_id, transaction_id)
    is_open = txn.status in OPEN_TRANSACTION_STATES
    if with_urls and not is_open:
        raise TransactionStateError(f"transaction {transaction_id} is {txn.status}; it hands out no URLs")
    destination = parse_uri(txn.destination)
    sending = [i for i in txn.items if is_open and i.status == ItemStatus.UPLOADING.value]
    staged = {i.id: staging_key(destination.prefix, txn.id, i.id) for i in sending if i.upload_id is None}
    present = _present_objects(destination.store_uri, list(staged.values()), settings)
    parts = _present_parts_of([i for i in sending if i.upload_id is not None], settings)
    issued: set[int] = set()
    if with_urls:
        window = [i.source_path for i in sending if i.upload_id is None and staged[i.id] not in present][:url_window]
        issued = {i.id for i in records.issue_single_put_urls(catalog, txn.id, window)} if window else set()
    stores: dict[str, ObjectStore] = {}
    files = []
    for item in txn.items:
        path, key, size, crc = item.source_path, item.key, item.size, item.crc32c
        multipart = item.upload_id is not None
        in_store: dict[int, int] = {}
        uploaded = item.status in DONE_ITEM_STATES
        urls: list[UploadUrl] = []
        if is_open and item.status == ItemStatus.UPLOADING.value:
            if item.store_uri not in stores:
                stores[item.store_uri], _ = open_store(item.store_uri, settings)
            store = stores[item.store_uri]
            if multipart:
                found = parts[item.id]
                if found is None:  # completed by an earlier complete that did not commit
                    uploaded = _exists(store, key)
                else:
                    sizes = part_sizes(size, item.part_size)
                    in_store = {n: p.size for n, p in found.items() if n <= len(sizes) and sizes[n - 1] == p.size}
                    uploaded = len(in_store) == len(sizes)
                    if with_urls and not uploaded:
                        for n, part_crc in enumerate(_part_checksums(item, part_crc32c), 1):
                            if n not in in_store:
                                url = store.presign_upload_part(key, item.upload_id, n, expires_in=expires_in,
                                                                crc32c=part_crc, size=sizes[n - 1])
                                headers = {"x-amz-checksum-crc32c": to_header(part_crc), "Content-Length": str(sizes[n - 1])}
                                urls.append(UploadUrl(url, "PUT", headers, n, sizes[n - 1]))
            else:
                uploaded = staged[item.id] in present
                if item.id in issued:
                    urls.append(_single_put_url(store, staged[item.id], item, expires_in))
        files.append(
            FileState(path, item.uri, size, item.status, multipart, item.part_size,
                      tuple(sorted(in_store)), uploaded, tuple(urls))
        )
    return DeviceUploadState(transaction_id, device_id, txn.status, expires_in, tuple(files), url_window)


def _single_put_url(store: ObjectStore, key: str, item: ItemInfo, expires_in: int) -> UploadUrl:
    """The URL of a single file's one PUT, to its staging `key`, signed with its CRC32C,
    Content-Length, Content-Type and `If-None-Match: *`: the store takes these bytes once."""
    url = store.presign_put(key, expires_in=expires_in, crc32c=item.crc32c, size=item.size,
                            content_type=CONTENT_TYPE, if_none_match=True)
    headers = {"x-amz-checksum-crc32c": to_header(item.crc32c), "Content-Length": str(item.size),
               "Content-Type": CONTENT_TYPE, "If-None-Match": "*"}
    return UploadUrl(url, "PUT", headers, None, item.size)


def device_upload_urls(
    catalog: Catalog,
    device_id: str,
    transaction_id: str,
    paths: list[str],
    *,
    expires_in: int = 900,
    url_window: int | None = None,
    settings: FerrySettings | None = None,
) -> DeviceUploadState:
    """URLs for the single files `paths` of the device's open transaction: the next window
    a device asks for as it goes, after those begin gave it. At most `url_window` paths
    (default `settings.url_window`; more: ManifestRefused, too large), each a file of the
    transaction (else ManifestRefused naming it). Each file still to be sent is recorded as
    issued before its URL is signed (refused once the transaction closed:
    TransactionStateError). The answer lists just these files; a multipart one (its part
    URLs come with begin and the status) or one already done gets no URL. Whether the store
    holds a file already is not looked up (`uploaded` is false for every file still to be
    sent): a device asks for what it has not sent, and the store refuses a second PUT to a
    staging key (412)."""
    settings = settings or load_settings()
    url_window = url_window or settings.url_window
    if len(paths) > url_window:
        raise ManifestRefused(f"URLs for {len(paths)} files asked for; at most {url_window} at a time", reason="too_large")
    scoped, owner = _check_owner(catalog, device_id, transaction_id)
    items = records.issue_single_put_urls(catalog, scoped, paths)
    unknown = set(paths) - {i.source_path for i in items}
    if unknown:  # (those known are marked issued already: a fence more, never one less)
        raise ManifestRefused(f"{min(unknown)} is not a file of transaction {transaction_id}")
    prefix = parse_uri(owner.destination).prefix
    stores: dict[str, ObjectStore] = {}
    files = []
    for item in items:
        urls: tuple[UploadUrl, ...] = ()
        if item.status == ItemStatus.UPLOADING.value and item.upload_id is None:
            if item.store_uri not in stores:
                stores[item.store_uri], _ = open_store(item.store_uri, settings)
            urls = (_single_put_url(stores[item.store_uri], staging_key(prefix, scoped, item.id), item, expires_in),)
        files.append(FileState(item.source_path, item.uri, item.size, item.status, item.upload_id is not None,
                               item.part_size, (), item.done, urls))
    return DeviceUploadState(transaction_id, device_id, owner.status, expires_in, tuple(files), url_window)


def _part_checksums(item: ItemInfo, given: dict[str, list[int]]) -> tuple[int, ...]:
    """The part CRC32Cs a multipart item's URLs are signed with: those recorded at begin
    (a device asking with others is refused), else, for a transaction begun before they
    were recorded, the device's own, checked against the file's CRC32C."""
    path = item.source_path
    if item.part_crc32c is not None:
        if path in given and tuple(given[path]) != item.part_crc32c:
            raise ManifestRefused(f"{path}: part checksums other than those declared at begin")
        return item.part_crc32c
    if path not in given:
        raise ManifestRefused(f"{path}: part checksums are needed for its part URLs")
    check_part_checksums(path, item.size, item.crc32c, item.part_size, given[path])
    return tuple(given[path])


def _present_objects(store_uri: str, keys: list[str], settings: FerrySettings) -> dict[str, ObjectMeta]:
    """{key: meta} of `keys` (staging keys of one transaction) that hold an object now: one
    LIST of their folder (storage_core.stores.lookup; a HEAD each when there are only a few)."""
    if not keys:
        return {}
    store, _ = open_store(store_uri, settings)
    return find_objects(store, keys)


def _present_parts_of(items: list[ItemInfo], settings: FerrySettings) -> dict[int, dict[int, StoredPart] | None]:
    """{item id: what _present_parts says} for multipart items, a bounded pool of ListParts
    at a time."""
    def parts_of(item: ItemInfo) -> dict[int, StoredPart] | None:
        store, _ = open_store(item.store_uri, settings)
        return _present_parts(store, item.key, item.upload_id)

    return dict(zip((i.id for i in items), _pooled(parts_of, items, name="ferry-parts")))


def _pooled(work: Callable[[T], R], items: list[T], *, workers: int = LOOKUP_WORKERS, name: str) -> list[R]:
    """`work` over `items`, `workers` at a time (in this thread for one item); results in
    order; the first exception raised once all have run."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(work, items))


def _exists(store: ObjectStore, key: str) -> bool:
    return _head(store, key) is not None


def _head(store: ObjectStore, key: str) -> ObjectMeta | None:
    try:
        return store.head(key)
    except ObjectNotFound:
        return None


# --- complete / abort -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Arrived:
    """What step 1 of complete found for one item, exactly one of: the parts of its
    multipart upload (`parts`), its staged single object (`staged`, a HEAD of its staging
    key), or its final object (`final`: put in place by an earlier complete that did not
    commit)."""

    item: ItemInfo
    store: ObjectStore
    parts: tuple[StoredPart, ...] | None = None
    staged: ObjectMeta | None = None
    final: ObjectMeta | None = None


@dataclass(frozen=True)
class StoredCheck:
    """The verdict on a stored object: what is wrong (None: nothing), and its CRC32C."""

    problem: str | None
    crc32c: int | None


def check_stored(store: ObjectStore, meta: ObjectMeta, *, size: int, crc32c: int | None,
                 known: int | None = None) -> StoredCheck:
    """The stored object `meta` describes, against the declared size and CRC32C (`None`: no
    CRC declared). Its CRC32C is `known` (e.g. combined from parts the store verified),
    else the store's own, else read back from the store."""
    if meta.size != size:
        return StoredCheck(f"size {meta.size} does not match the declared {size}", None)
    actual = known if known is not None else meta.crc32c
    if actual is None:
        with store.open_read(meta.key, if_match=meta.etag) as stream:
            actual, _ = crc32c_of_stream(stream)
    if crc32c is not None and actual != crc32c:
        return StoredCheck(f"CRC32C {to_hex(actual)} does not match the declared {to_hex(crc32c)}", actual)
    return StoredCheck(None, actual)


def _completable(catalog: Catalog, device_id: str, transaction_id: str) -> TransactionInfo:
    """The device's transaction when it is open or already completed (a replayed complete
    answers with it); any other state cannot be completed."""
    txn = _own(catalog, device_id, transaction_id)
    if txn.status != TransactionStatus.COMPLETED.value and txn.status not in OPEN_TRANSACTION_STATES:
        raise TransactionStateError(f"transaction {transaction_id} is {txn.status}; it cannot be completed")
    return txn


def _arrivals(txn: TransactionInfo, settings: FerrySettings) -> tuple[list[_Arrived], list[str]]:
    """Step 1 of complete: what the store holds for each item not done yet, and "path: what
    is missing" for every item not ready. Reads only, a bounded pool of HEADs and ListParts
    at a time (a manifest of thousands of files is not one request after another)."""
    prefix = parse_uri(txn.destination).prefix
    todo = [i for i in txn.items if i.status not in DONE_ITEM_STATES]
    stores: dict[str, ObjectStore] = {}
    for item in todo:
        if item.status == ItemStatus.UPLOADING.value and item.store_uri not in stores:
            stores[item.store_uri], _ = open_store(item.store_uri, settings)

    def arrival(item: ItemInfo) -> _Arrived | str:
        path, key = item.source_path, item.key
        if item.status != ItemStatus.UPLOADING.value:  # pending: its begin has not finished
            return f"{path} ({item.status})"
        store = stores[item.store_uri]
        if item.upload_id is None:
            staged = _head(store, staging_key(prefix, txn.id, item.id))
            return f"{path}: nothing has been uploaded yet" if staged is None else _Arrived(item, store, staged=staged)
        found = _present_parts(store, key, item.upload_id)
        if found is None:  # completed by an earlier complete that did not commit, or aborted
            final = _head(store, key)
            if final is None or (item.replaces_etag is not None and final.etag == item.replaces_etag):
                return f"{path}: nothing has been uploaded yet"
            return _Arrived(item, store, final=final)
        sizes = part_sizes(item.size, item.part_size)
        absent = [n for n in range(1, len(sizes) + 1) if n not in found]
        if absent:
            return f"{path}: {len(absent)} of {len(sizes)} part(s) not uploaded yet (e.g. part {absent[0]})"
        return _Arrived(item, store, parts=tuple(p for _, p in sorted(found.items())))

    outcomes = _pooled(arrival, todo, name="ferry-complete")
    return [o for o in outcomes if isinstance(o, _Arrived)], [o for o in outcomes if isinstance(o, str)]


def complete_device_upload(
    catalog: Catalog, device_id: str, transaction_id: str, *, settings: FerrySettings | None = None
) -> CompletedUpload:
    """Verify every file against the store, put it in place and complete the transaction,
    writing its outbox row in the same database transaction. Replayed: the same answer,
    nothing new. Any file not uploaded (a pending item included): UploadIncomplete naming
    how many and one, nothing changed. Wrong bytes: IntegrityError, the transaction
    aborted and everything it put in the store deleted.

    In place means: a single file's verified staged object copied server-side to its
    final key, a multipart upload completed there; for a new path only where no object
    is (an object that appeared meanwhile is an IntegrityError), for a replacement (see
    `begin_device_upload`) only over the version it was begun to replace, and under the
    transaction's lock, in the database transaction that records the new version (an
    abort cannot come between them). New paths are put in place before the lock: an abort
    that commits first makes this call delete what it put. The staged copies stay (their
    URLs refused while they are there); reconcile deletes them once the URLs expired.

    Completes (and begins) of one transaction take turns, whichever gateway replica runs
    them (`_transaction_turn`): a device that sends complete again while its first is
    still running (a timed-out answer, retried through another replica) gets the first
    one's answer, and neither takes the other's objects for a stranger's. One that waited
    FERRY_CATALOG_TIMEOUT for its turn raises CatalogUnavailable (retryable: a 503 the
    device client retries)."""
    settings = settings or load_settings()
    scoped, _ = _check_owner(catalog, device_id, transaction_id)
    with _transaction_turn(catalog, scoped, transaction_id, settings):
        return _complete(catalog, device_id, transaction_id, settings)


def _complete(catalog: Catalog, device_id: str, transaction_id: str, settings: FerrySettings) -> CompletedUpload:
    """complete_device_upload's work, run in the transaction's turn."""
    txn = _completable(catalog, device_id, transaction_id)
    transaction_id = txn.id  # the catalog's (scoped_transaction_id)
    if txn.status == TransactionStatus.COMPLETED.value:
        return records.completed_upload(catalog, transaction_id)

    # 1. everything present? (nothing changes when not)
    arrived, missing = _arrivals(txn, settings)
    if missing:
        done = records.completed_upload(catalog, transaction_id)  # a concurrent complete got there first
        if done is not None:
            return done
        raise UploadIncomplete(f"{len(missing)} of {len(txn.items)} file(s) not uploaded yet, e.g. {missing[0]}")

    # 2. verify everything, then put new paths in place (each a bounded pool of requests at a
    # time); a failure is acted on only once every request of its step has returned
    checks = _pooled(_verify, arrived, workers=settings.max_in_flight, name="ferry-verify")
    for a, check in zip(arrived, checks):
        if check.problem:
            _fail(catalog, txn, a.item.id, f"{a.item.source_path}: {check.problem}", settings)
    # already in place (an earlier complete that did not commit put it there): verified as it is
    verified = [VerifiedItem(a.item.id, c.crc32c, a.final.etag) for a, c in zip(arrived, checks) if a.final is not None]
    to_place = [(a, c.crc32c) for a, c in zip(arrived, checks) if a.final is None]
    replacing = [(a, crc) for a, crc in to_place if a.item.replaces_etag is not None]  # step 3 puts them in place
    new = [(a, crc) for a, crc in to_place if a.item.replaces_etag is None]
    placed = _pooled(lambda pair: _attempt(_put_in_place, *pair), new, workers=settings.max_in_flight, name="ferry-place")
    assembled = [(a.store, meta) for (a, _), meta in zip(new, placed) if isinstance(meta, ObjectMeta)]
    if any(not isinstance(meta, ObjectMeta) for meta in placed) and _is_aborted(catalog, txn.id):
        # an abort aborted an upload, or fenced a staged copy, under us, and may have looked
        # before the others were in place
        _delete_unrecorded(catalog, assembled)
        raise TransactionStateError(f"transaction {txn.id} is aborted; it cannot be completed")
    for (a, crc), meta in zip(new, placed):
        if isinstance(meta, _Conflict):
            _fail(catalog, txn, a.item.id, meta.problem, settings)
        if isinstance(meta, FerryError):
            raise meta
        check = check_stored(a.store, meta, size=a.item.size, crc32c=crc, known=crc)
        if check.problem:
            _fail(catalog, txn, a.item.id, f"{a.item.source_path}: {check.problem}", settings)
        verified.append(VerifiedItem(a.item.id, crc, meta.etag))

    # 3. one database transaction, under the transaction's lock: replacements put in place,
    # items stored, transaction completed, outbox row (or refused: an abort committed first)
    try:
        done = records.complete_verified_upload(
            catalog, transaction_id, verified, replacing=[a.item.id for a, _ in replacing],
            replace=lambda: _replace(txn, replacing),
        )
    except CatalogConflict:  # a concurrent complete committed first: answer with it
        done = records.completed_upload(catalog, transaction_id)
        if done is None:
            raise
        return done
    except TransactionStateError:
        if _is_aborted(catalog, transaction_id):
            # the abort deleted what it found; what step 2 put in place after it looked is ours to delete
            _delete_unrecorded(catalog, assembled)
        raise
    return done  # the staged copies stay, fencing their URLs: reconcile deletes them (storage_core.upload.staging)


@dataclass(frozen=True)
class _Conflict:
    """Another object is at a new path's final key: the transaction must be discarded."""

    problem: str


def _verify(a: _Arrived) -> StoredCheck:
    """What arrived for one item, checked before anything is put in place: a multipart
    file's parts against its plan (every part URL was signed with a part CRC32C recorded
    at begin, and they combine to the file's: the store verified the bytes part by part),
    a single file's object against its size and CRC32C."""
    item = a.item
    if a.parts is not None:
        sizes = part_sizes(item.size, item.part_size)
        wrong = [p for p in a.parts if p.part_number > len(sizes) or sizes[p.part_number - 1] != p.size]
        if wrong:
            return StoredCheck(f"part {wrong[0].part_number} has {wrong[0].size} bytes, not as planned", None)
        return StoredCheck(None, item.crc32c)
    return check_stored(a.store, a.staged or a.final, size=item.size, crc32c=item.crc32c)


def _attempt(work: Callable[..., R], *args: object) -> R | FerryError:
    """`work(*args)`, or the FerryError it raised (a pooled step acts on failures once
    every request has returned)."""
    try:
        return work(*args)
    except FerryError as exc:
        return exc


def _put_in_place(a: _Arrived, crc32c: int) -> ObjectMeta | _Conflict:
    """A new path's verified bytes at its final key, only where no object is: its multipart
    upload completed, or its staged object copied (`crc32c`: the verified one). An object
    there already is a _Conflict, unless it is this file's own bytes, put there by an
    earlier complete that did not commit. UploadIncomplete: the upload or the staged
    object is gone (an abort under us)."""
    item, path = a.item, a.item.source_path
    try:
        if a.parts is not None:
            return a.store.complete_multipart(item.key, item.upload_id, [(p.part_number, p.etag) for p in a.parts],
                                              if_none_match=True)
        return a.store.copy(a.staged, item.key, if_none_match=True)
    except (ObjectNotFound, UploadNotFound):
        raise UploadIncomplete(f"{path}: nothing has been uploaded yet") from None
    except PreconditionFailed:
        there = _head(a.store, item.key)
        if there is not None and a.staged is not None and (there.size, there.crc32c) == (item.size, crc32c):
            return there
        return _Conflict(f"{path}: another object appeared at its destination meanwhile")


def _replace(txn: TransactionInfo, replacing: list[tuple[_Arrived, int]]) -> list[VerifiedItem]:
    """Step 3's replacements, run under the transaction's lock: every stored version first
    checked to be the one replaced (so none is replaced when one has changed), then each
    put in place on that condition. TransactionStateError when one has changed."""
    for a, _ in replacing:
        now = _head(a.store, a.item.key)
        if now is None or now.etag != a.item.replaces_etag:
            raise TransactionStateError(f"{a.item.source_path}: the stored version changed in the store since "
                                        f"this upload began; nothing was replaced")
    verified = []
    for a, crc in replacing:
        item = a.item
        try:
            if a.parts is not None:
                meta = a.store.complete_multipart(item.key, item.upload_id,
                                                  [(p.part_number, p.etag) for p in a.parts], if_match=item.replaces_etag)
            else:
                meta = a.store.copy(a.staged, item.key, if_match=item.replaces_etag)
        except PreconditionFailed:
            raise TransactionStateError(f"{item.source_path}: the stored version changed in the store meanwhile; "
                                        f"it was not replaced") from None
        verified.append(VerifiedItem(item.id, crc, meta.etag))
    return verified


def _fence_staging(aborted: records.AbortedUpload, settings: FerrySettings) -> list[str]:
    """A 0-byte marker at the staging key of each single PUT a URL was issued for
    (storage_core.upload.staging.fence): the unverified bytes gone and the URLs refused.
    What failed is returned, one line each."""
    destination = parse_uri(aborted.destination)
    try:
        store, _ = open_store(destination.store_uri, settings)
    except FerryError as exc:
        return [f"{destination}: {one_line(exc)}"]
    keys = [staging_key(destination.prefix, aborted.transaction_id, item_id) for item_id in aborted.single_puts]
    return fence(store, keys, max_in_flight=settings.max_in_flight)


def _is_aborted(catalog: Catalog, transaction_id: str) -> bool:
    return records.get_transaction(catalog, transaction_id).status == TransactionStatus.ABORTED.value


def _delete_unrecorded(catalog: Catalog, assembled: list[tuple[ObjectStore, ObjectMeta]]) -> None:
    """Delete the objects complete put in place (each still the version it put) unless the
    catalog records that version as stored."""
    for store, meta in assembled:
        now = _head(store, meta.key)
        if now is None or now.etag != meta.etag:
            continue
        if records.stored_etag(catalog, store.uri, meta.key) != meta.etag:
            store.delete(meta.key)


def _fail(catalog: Catalog, txn: TransactionInfo, item_id: int, problem: str, settings: FerrySettings) -> NoReturn:
    """The item failed verification: recorded, the transaction aborted (everything it put
    in the store deleted), IntegrityError raised."""
    records.record_item_failed(catalog, item_id, problem, final=True)
    try:
        abort_device_upload(catalog, txn.device_id, txn.id, reason=f"verification failed: {problem}", settings=settings)
    except AbortFailed as exc:  # aborted; what is left behind is reconcile's
        log.warning("%s", one_line(exc))
    raise IntegrityError(f"{problem}; the upload was discarded")


def abort_device_upload(
    catalog: Catalog, device_id: str, transaction_id: str, *, reason: str = "aborted by the device",
    settings: FerrySettings | None = None,
) -> str:
    """Abort the device's open transaction, then clean up, so that no URL it handed out
    can write any more and nothing unverified is left: a 0-byte marker at the staging key
    of every single-PUT file a URL was issued for (replacing what its URL put, and
    refusing the URL from then on; no other staging key can hold anything), objects a
    complete put at new paths deleted (unless the catalog records that version as
    stored), multipart uploads aborted (their part URLs die with them); the
    three run side by side. The abort commits first, under the transaction's lock, after
    re-checking that it is not completed (TransactionStateError), so nothing of a completed
    upload is ever deleted. An aborted one stays aborted (aborting it again changes
    nothing). A failed cleanup raises AbortFailed; reconcile replaces with a marker what a
    URL left unfenced put meanwhile. Returns the transaction's status (aborted)."""
    settings = settings or load_settings()
    transaction_id, _ = _check_owner(catalog, device_id, transaction_id)
    aborted = records.abort_before_cleanup(catalog, transaction_id, reason=reason)
    with ThreadPoolExecutor(3, thread_name_prefix="ferry-abort") as pool:
        cleanups = [pool.submit(_fence_staging, aborted, settings),
                    pool.submit(_delete_unverified, aborted.objects, settings),
                    pool.submit(_abort_uploads, aborted.uploads, settings)]
        failures = [failure for cleanup in cleanups for failure in cleanup.result()]
    if failures:
        log.warning("abort of %s left %d thing(s) behind, e.g. %s", transaction_id, len(failures), failures[0])
        records.record_abort_incomplete(catalog, transaction_id, failures[0])
        raise AbortFailed(f"transaction {transaction_id} is aborted, but {len(failures)} cleanup(s) failed, "
                          f"e.g. {failures[0]}; `ferry reconcile` retries the uploads")
    return aborted.status


def abort_device_uploads(catalog: Catalog, device_id: str, *, reason: str,
                         settings: FerrySettings | None = None) -> list[str]:
    """Abort every open upload of the device (when it is revoked), each as
    `abort_device_upload` does. Returns their ids; AbortFailed after trying them all when
    a cleanup failed."""
    ids = records.open_transactions_of_device(catalog, device_id, origination=ORIGINATION)
    failed = []
    for transaction_id in ids:
        try:
            abort_device_upload(catalog, device_id, transaction_id, reason=reason, settings=settings)
        except TransactionStateError:
            pass  # completed meanwhile: nothing to abort
        except AbortFailed as exc:
            failed.append(one_line(exc))
    if failed:
        raise AbortFailed(f"{len(failed)} of {len(ids)} upload(s) of {device_id} left something behind, e.g. {failed[0]}")
    return ids
def _delete_unverified(targets: tuple[records.UnverifiedObject, ...], settings: FerrySettings) -> list[str]:
    """Delete the objects at `targets`, except the version the catalog records as stored
    at a place (an older version someone relies on: compared by a HEAD's ETag). Where the
    catalog records nothing, a LIST says what is there and a batch delete removes it.
    Returns what failed, one line each."""
    failures: list[str] = []
    by_store: dict[str, list[records.UnverifiedObject]] = {}
    for target in targets:
        by_store.setdefault(target.store_uri, []).append(target)
    for store_uri, group in by_store.items():
        try:
            store, _ = open_store(store_uri, settings)
            present = find_objects(store, [t.key for t in group if t.recorded_etag is None])
            doomed = sorted(present)
            for target in (t for t in group if t.recorded_etag is not None):
                meta = _head(store, target.key)
                if meta is not None and meta.etag != target.recorded_etag:
                    doomed.append(target.key)
            if isinstance(store, DeleteMany):
                store.delete_many(doomed)
            else:
                for key in doomed:
                    store.delete(key)
        except FerryError as exc:
            failures.append(f"delete in {store_uri}: {one_line(exc)}")
    return failures


def _abort_uploads(uploads: tuple[records.InFlightUpload, ...], settings: FerrySettings) -> list[str]:
    """Abort the multipart uploads, a bounded pool at a time; returns what failed."""
    def abort(upload: records.InFlightUpload) -> str | None:
        try:
            store, _ = open_store(upload.store_uri, settings)
            store.abort_multipart(upload.key, upload.upload_id)
        except UploadNotFound:
            pass  # already gone (aborted before, or completed by a complete that lost the race)
        except FerryError as exc:  # recorded by no open transaction now: reconcile aborts it
            return f"abort {upload.store_uri}/{upload.key} (upload {upload.upload_id}): {one_line(exc)}"
        return None

    return [o for o in _pooled(abort, list(uploads), name="ferry-abort") if o is not None]


__all__ = [
    "CONTENT_TYPE",
    "ORIGINATION",
    "CompletedUpload",
    "DeviceFile",
    "DeviceUploadState",
    "FileState",
    "StoredCheck",
    "UploadLimits",
    "UploadUrl",
    "abort_device_upload",
    "abort_device_uploads",
    "begin_device_upload",
    "check_manifest",
    "check_part_checksums",
    "check_stored",
    "complete_device_upload",
    "device_upload_status",
    "device_upload_urls",
    "part_sizes",
    "require_presign",
    "scoped_transaction_id",
]
