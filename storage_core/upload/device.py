"""Device uploads through presigned URLs: a device with no storage credentials stores a
whole manifest under its own prefix, and the server side verifies before anything counts.

    begin_device_upload ─> device PUTs files / parts to presigned URLs ─> complete_device_upload
         │   (manifest checked; multipart uploads created and            │ (sizes from HEAD / ListParts,
         │    their ids recorded before any URL is handed out)           │  CRC32C; one DB transaction:
         └─> device_upload_status (what is present; fresh URLs) ─────────┘  items stored, transaction
                                                                            completed, outbox row)
    abort_device_upload: transaction aborted first, then multipart uploads aborted and
                         unverified objects deleted.

Begin records the transaction (items `pending`), creates the multipart uploads, then
records every item `uploading` with its upload id in one database transaction: a crash
leaves either items complete refuses (a repeated begin finishes them; uploads created
meanwhile are recorded by no open transaction, and reconcile aborts them) or all of them
accounted for. Complete and abort take the transaction's row lock and re-check its state
before committing, so a race between them ends as one or the other, never a mix.

A device declares, per file, its size and CRC32C; a multipart file also declares its part
size and every part's CRC32C (they must combine to the file's CRC32C). Every URL is signed
with the checksum it must carry, so the store itself refuses other bytes; a part URL is
only issued for a part list that combines to the file's recorded CRC32C, which is why
completion can trust the parts' checksums once ListParts shows the planned sizes.

On a verification failure at complete, every object of the transaction that is not
recorded as stored is deleted, its multipart uploads aborted, and the transaction aborted:
nothing unverified is ever recorded or left behind.
"""

from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from storage_core.catalog import transactions as records
from storage_core.catalog.db import Catalog
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
    FerryError,
    IntegrityError,
    InvalidKey,
    ManifestRefused,
    ObjectNotFound,
    TransactionStateError,
    UnknownUpload,
    UploadIncomplete,
    UploadNotFound,
    one_line,
)
from storage_core.keys import StorageUri, validate_key
from storage_core.stores.base import DeleteMany, ObjectMeta, ObjectStore, StoredPart
from storage_core.stores.lookup import MAX_WORKERS as LOOKUP_WORKERS, find_objects
from storage_core.stores.registry import open_store
from storage_core.manifest import ManifestEntry, modality_of
from storage_core.parts import MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, split_parts
from storage_core.upload.transactions import abort_transactions

log = logging.getLogger(__name__)
ORIGINATION = "device gateway"
_TRANSACTION_ID = re.compile(r"[0-9a-f]{32}")
GiB = 1024**3


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


def _presign_part(store: ObjectStore, key: str, upload_id: str, number: int, crc: int, expires_in: int) -> str:
    return store.presign_upload_part(key, upload_id, number, expires_in=expires_in, crc32c=crc)


def _present_parts(store: ObjectStore, key: str, upload_id: str) -> dict[int, StoredPart] | None:
    """{part number: part} the store holds, or None when the upload no longer exists."""
    try:
        return {p.part_number: p for p in store.list_parts(key, upload_id)}  # a repeated part: the last wins
    except (ObjectNotFound, UploadNotFound):
        return None


def scoped_transaction_id(catalog: Catalog, device_id: str, transaction_id: str) -> str:
    """The catalog id of what the device calls `transaction_id`. Ids a device chooses are
    scoped to the device: the id itself unless another device's (or an ingest's)
    transaction holds it, then one derived from the device and the id. So a device can
    never tell a taken id from a free one (both begin, 201), nor reach another's."""
    owner = records.transaction_owner(catalog, transaction_id)
    if owner is None or (owner.device_id == device_id and owner.origination == ORIGINATION):
        return transaction_id
    return hashlib.sha256(f"{device_id}/{transaction_id}".encode()).hexdigest()[:32]


def _check_owner(catalog: Catalog, device_id: str, transaction_id: str) -> str:
    """The catalog id of the device's own transaction `transaction_id` (reading no item);
    UnknownUpload when the device has none by that id."""
    scoped = scoped_transaction_id(catalog, device_id, transaction_id)
    owner = records.transaction_owner(catalog, scoped)
    if owner is None or owner.device_id != device_id or owner.origination != ORIGINATION:
        raise UnknownUpload(f"no upload transaction {transaction_id!r} for device {device_id}")
    return scoped


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
    settings: FerrySettings | None = None,
) -> DeviceUploadState:
    """Check the manifest, begin the transaction, create the multipart uploads (each id
    recorded before any URL exists) and return URLs for every file to send. Two steps, each
    one database transaction: the transaction and its items `pending`, then every item
    `uploading` with its upload id (all or none). A crash between them leaves items a
    complete refuses and a repeated begin finishes. Nothing is recorded when the manifest
    is refused; a destination another transaction is uploading aborts this one
    (TransactionStateError). With the device's own `transaction_id`, a
    repeated begin (the answer was lost) returns the same transaction with fresh URLs."""
    settings = settings or load_settings()
    entries = check_manifest(device_id, files, limits)
    declared = {f.path: f for f in files}
    crcs = {p: list(f.part_crc32c) for p, f in declared.items() if f.part_crc32c is not None}
    shown = transaction_id  # what the device calls it; the catalog's may differ (scoped_transaction_id)
    if transaction_id is not None:
        if not _TRANSACTION_ID.fullmatch(transaction_id):
            raise ManifestRefused(f"transaction id {transaction_id!r}: expected 32 lowercase hex digits")
        transaction_id = scoped_transaction_id(catalog, device_id, transaction_id)
        existing = records.find_transaction(catalog, transaction_id)
        if existing is not None:  # a repeated begin (the device lost the answer): the same transaction
            if sorted(i.source_path for i in existing.items) != sorted(declared):
                raise TransactionStateError(f"transaction {transaction_id} was begun with a different manifest")
            if existing.status in OPEN_TRANSACTION_STATES:  # a begin that died before its second step
                _start_uploads(catalog, existing, declared, settings)
            return device_upload_status(catalog, device_id, shown, part_crc32c=crcs,
                                        with_urls=existing.status in OPEN_TRANSACTION_STATES,
                                        expires_in=expires_in, settings=settings)
    try:
        txn = records.begin_transaction(catalog, entries, destination=destination, origination=ORIGINATION,
                                        source_kind=SourceKind.DEVICE, device_id=device_id,
                                        transaction_id=transaction_id)
    except CatalogConflict:  # the same id begun concurrently: the loser retries begin
        raise TransactionStateError(f"transaction {transaction_id} is being begun; retry") from None
    busy = [i for i in txn.items if i.skip_reason == SkipReason.BUSY]
    if busy:
        abort_transactions(catalog, [txn.id], reason=f"not started: {busy[0].uri} {busy[0].error}", settings=settings)
        raise TransactionStateError(f"{busy[0].uri} is {busy[0].error}")
    try:
        _start_uploads(catalog, txn, declared, settings)
        return device_upload_status(catalog, device_id, shown or txn.id, part_crc32c=crcs, with_urls=True,
                                    expires_in=expires_in, settings=settings)
    except BaseException:
        abort_transactions(catalog, [txn.id], reason="begin failed", settings=settings)
        raise


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
            planned.append(records.DeviceItemUpload(info.id, upload_id, f.part_size))
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
    settings: FerrySettings | None = None,
) -> DeviceUploadState:
    """What the store holds for each file, from the store itself: single files by a LIST
    of each recording's prefix (storage_core.stores.lookup; not one HEAD per file), multipart
    files by ListParts. With `with_urls`, fresh URLs for what is missing: a single file
    needs nothing more, a multipart file needs its part checksums in `part_crc32c` (checked
    against the recorded file CRC32C, so every URL ever issued for a part carries a
    consistent one)."""
    settings = settings or load_settings()
    part_crc32c = part_crc32c or {}
    txn = _own(catalog, device_id, transaction_id)
    is_open = txn.status in OPEN_TRANSACTION_STATES
    sending = [i for i in txn.items if is_open and i.status == ItemStatus.UPLOADING.value]
    present = _present_objects([i for i in sending if i.upload_id is None], settings)
    parts = _present_parts_of([i for i in sending if i.upload_id is not None], settings)
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
                        if path not in part_crc32c:
                            raise ManifestRefused(f"{path}: part checksums are needed for its part URLs")
                        check_part_checksums(path, size, crc, item.part_size, part_crc32c[path])
                        for n, part_crc in enumerate(part_crc32c[path], 1):
                            if n not in in_store:
                                url = _presign_part(store, key, item.upload_id, n, part_crc, expires_in)
                                headers = {"x-amz-checksum-crc32c": to_header(part_crc)}
                                urls.append(UploadUrl(url, "PUT", headers, n, sizes[n - 1]))
            else:
                uploaded = (item.store_uri, key) in present
                if with_urls and not uploaded:
                    url = store.presign_put(key, expires_in=expires_in, crc32c=crc)
                    urls.append(UploadUrl(url, "PUT", {"x-amz-checksum-crc32c": to_header(crc)}, None, size))
        files.append(
            FileState(path, item.uri, size, item.status, multipart, item.part_size,
                      tuple(sorted(in_store)), uploaded, tuple(urls))
        )
    return DeviceUploadState(transaction_id, device_id, txn.status, expires_in, tuple(files))


def _recording_prefix(item: ItemInfo) -> str:
    """The key prefix of the item's recording (`PREFIX/DEVICE/RECORDING/`): what one LIST covers."""
    return item.key[: len(item.key) - len(item.relative_path)]


def _present_objects(items: list[ItemInfo], settings: FerrySettings) -> dict[tuple[str, str], ObjectMeta]:
    """{(store URI, key): meta} of the items' keys that hold an object now, from a LIST of
    each recording's prefix (a HEAD for the few keys a listing does not settle)."""
    by_store: dict[str, dict[str, str]] = {}
    for item in items:
        by_store.setdefault(item.store_uri, {})[item.key] = _recording_prefix(item)
    present = {}
    for store_uri, prefixes in by_store.items():
        store, _ = open_store(store_uri, settings)
        for key, meta in find_objects(store, prefixes, group_of=prefixes.__getitem__).items():
            present[(store_uri, key)] = meta
    return present


def _present_parts_of(items: list[ItemInfo], settings: FerrySettings) -> dict[int, dict[int, StoredPart] | None]:
    """{item id: what _present_parts says} for multipart items, a bounded pool of ListParts
    at a time."""
    def parts_of(item: ItemInfo) -> dict[int, StoredPart] | None:
        store, _ = open_store(item.store_uri, settings)
        return _present_parts(store, item.key, item.upload_id)

    if len(items) <= 1:
        return {item.id: parts_of(item) for item in items}
    with ThreadPoolExecutor(min(LOOKUP_WORKERS, len(items)), thread_name_prefix="ferry-parts") as pool:
        return dict(zip((i.id for i in items), pool.map(parts_of, items)))


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
    """What step 1 of complete found for one item: the parts of its multipart upload
    (`parts`), or the single object's HEAD (`head`) — exactly one of them."""

    item: ItemInfo
    store: ObjectStore
    parts: tuple[StoredPart, ...] | None = None
    head: ObjectMeta | None = None


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


def complete_device_upload(
    catalog: Catalog, device_id: str, transaction_id: str, *, settings: FerrySettings | None = None
) -> CompletedUpload:
    """Verify every file against the store and complete the transaction, writing its
    outbox row in the same database transaction. Replayed: the same answer, nothing new.
    Any file not uploaded (a pending item included): UploadIncomplete naming how many and
    one, nothing changed. Wrong bytes: IntegrityError, the transaction's unverified objects
    deleted, its uploads aborted, the transaction aborted. Aborted meanwhile (complete and
    abort serialize on the transaction's lock): TransactionStateError, and the objects this
    call assembled deleted."""
    settings = settings or load_settings()
    txn = _completable(catalog, device_id, transaction_id)
    transaction_id = txn.id  # the catalog's (scoped_transaction_id)
    if txn.status == TransactionStatus.COMPLETED.value:
        return records.completed_upload(catalog, transaction_id)

    # 1. everything present? (nothing changes when not)
    arrived: list[_Arrived] = []
    missing: list[str] = []  # "path: what is missing", for every file not ready
    for item in (i for i in txn.items if i.status not in DONE_ITEM_STATES):
        path, key = item.source_path, item.key
        if item.status != ItemStatus.UPLOADING.value:  # pending: its begin has not finished
            missing.append(f"{path} ({item.status})")
            continue
        store, _ = open_store(item.store_uri, settings)
        if item.upload_id is not None:
            found = _present_parts(store, key, item.upload_id)
            if found is not None:
                sizes = part_sizes(item.size, item.part_size)
                absent = [n for n in range(1, len(sizes) + 1) if n not in found]
                if absent:
                    missing.append(f"{path}: {len(absent)} of {len(sizes)} part(s) not uploaded yet (e.g. part {absent[0]})")
                    continue
                wrong = [n for n, p in sorted(found.items()) if n > len(sizes) or sizes[n - 1] != p.size]
                if wrong:
                    _fail(catalog, transaction_id, item.id,
                          f"{path}: part {wrong[0]} has {found[wrong[0]].size} bytes, not as planned", settings)
                arrived.append(_Arrived(item, store, parts=tuple(p for _, p in sorted(found.items()))))
                continue
        head = _head(store, key)
        if head is None:
            missing.append(f"{path}: nothing has been uploaded yet")
            continue
        arrived.append(_Arrived(item, store, head=head))
    if missing:
        raise UploadIncomplete(f"{len(missing)} of {len(txn.items)} file(s) not uploaded yet, e.g. {missing[0]}")

    # 2. assemble (with the parts step 1 listed) and verify (against the HEAD step 1 got)
    verified: list[VerifiedItem] = []
    assembled: list[tuple[ObjectStore, ObjectMeta]] = []
    for a in arrived:
        item = a.item
        try:
            if a.parts is None:
                meta, known = a.head, None
            else:
                meta = a.store.complete_multipart(item.key, item.upload_id, [(p.part_number, p.etag) for p in a.parts])
                known = item.crc32c  # every part was verified by the store against a checksum combining to it
        except (ObjectNotFound, UploadNotFound):
            _refuse_if_aborted(catalog, transaction_id)  # an abort aborted the upload under us
            raise UploadIncomplete(f"{item.source_path}: nothing has been uploaded yet") from None
        assembled.append((a.store, meta))
        check = check_stored(a.store, meta, size=item.size, crc32c=item.crc32c, known=known)
        if check.problem:
            _fail(catalog, transaction_id, item.id, f"{item.source_path}: {check.problem}", settings)
        verified.append(VerifiedItem(item.id, check.crc32c, meta.etag))

    # 3. one database transaction, under the transaction's lock: items stored, transaction
    # completed, outbox row (or refused: an abort committed first)
    try:
        return records.complete_verified_upload(catalog, transaction_id, verified)
    except CatalogConflict:  # a concurrent complete committed first: answer with it
        done = records.completed_upload(catalog, transaction_id)
        if done is None:
            raise
        return done
    except TransactionStateError:
        if records.get_transaction(catalog, transaction_id).status == TransactionStatus.ABORTED.value:
            # the abort deleted what it found; what step 2 assembled after it looked is ours to delete
            _delete_unrecorded(catalog, assembled)
        raise


def _refuse_if_aborted(catalog: Catalog, transaction_id: str) -> None:
    status = records.get_transaction(catalog, transaction_id).status
    if status == TransactionStatus.ABORTED.value:
        raise TransactionStateError(f"transaction {transaction_id} is aborted; it cannot be completed")


def _delete_unrecorded(catalog: Catalog, assembled: list[tuple[ObjectStore, ObjectMeta]]) -> None:
    """Delete the objects complete checked (each still the version it checked) unless the
    catalog records that version as stored."""
    for store, meta in assembled:
        now = _head(store, meta.key)
        if now is None or now.etag != meta.etag:
            continue
        if records.stored_etag(catalog, store.uri, meta.key) != meta.etag:
            store.delete(meta.key)


def _discard_unverified(catalog: Catalog, transaction_id: str, settings: FerrySettings) -> None:
    """Delete objects a device put for this transaction's open items, unless the catalog
    records that exact object as stored (an older version someone relies on)."""
    for target in records.unverified_objects(catalog, transaction_id):
        store, _ = open_store(target.store_uri, settings)
        try:
            meta = store.head(target.key)
        except ObjectNotFound:
            continue
        if target.recorded_etag != meta.etag:
            store.delete(target.key)


def _fail(catalog: Catalog, transaction_id: str, item_id: int, problem: str, settings: FerrySettings) -> None:
    _discard_unverified(catalog, transaction_id, settings)
    records.record_item_failed(catalog, item_id, problem, final=True)
    abort_transactions(catalog, [transaction_id], reason=f"verification failed: {problem}", settings=settings)
    raise IntegrityError(f"{problem}; the upload was discarded")


def abort_device_upload(
    catalog: Catalog, device_id: str, transaction_id: str, *, reason: str = "aborted by the device",
    settings: FerrySettings | None = None,
) -> TransactionInfo:
    """Abort the device's open transaction, then clean up: objects it put deleted (unless
    the catalog records that version as stored), multipart uploads aborted. The abort
    commits first, under the transaction's lock, after re-checking that it is not
    completed (TransactionStateError), so nothing of a completed upload is ever deleted.
    An aborted one stays aborted. A failed cleanup raises AbortFailed."""
    settings = settings or load_settings()
    transaction_id = _check_owner(catalog, device_id, transaction_id)
    aborted = records.abort_before_cleanup(catalog, transaction_id, reason=reason)
    failures = _delete_unverified(aborted.objects, settings)
    failures += _abort_uploads(aborted.uploads, settings)
    if failures:
        log.warning("abort of %s left %d thing(s) behind, e.g. %s", transaction_id, len(failures), failures[0])
        records.record_abort_incomplete(catalog, transaction_id, failures[0])
        raise AbortFailed(f"transaction {transaction_id} is aborted, but {len(failures)} cleanup(s) failed, "
                          f"e.g. {failures[0]}; `ferry reconcile` retries the uploads")
    return aborted.transaction


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

    if len(uploads) <= 1:
        outcomes = [abort(u) for u in uploads]
    else:
        with ThreadPoolExecutor(min(LOOKUP_WORKERS, len(uploads)), thread_name_prefix="ferry-abort") as pool:
            outcomes = list(pool.map(abort, uploads))
    return [o for o in outcomes if o is not None]


__all__ = [
    "ORIGINATION",
    "CompletedUpload",
    "DeviceFile",
    "DeviceUploadState",
    "FileState",
    "StoredCheck",
    "UploadLimits",
    "UploadUrl",
    "abort_device_upload",
    "begin_device_upload",
    "check_manifest",
    "check_part_checksums",
    "check_stored",
    "complete_device_upload",
    "device_upload_status",
    "part_sizes",
    "require_presign",
    "scoped_transaction_id",
]
