"""Which of many keys exist, at the cost of a few LIST pages instead of one HEAD per key.

    find_objects(store, keys) ─> {key: ObjectMeta} of those present

Keys are grouped by their folder (the key up to its last `/`, or what `group_of` says). A
group of at least `LIST_AT_LEAST` keys is answered by listing its prefix (1,000 keys a
page); the listing stops as soon as every key of the group was seen, or once it has read
`LIST_BUDGET_FACTOR` entries per wanted key (a folder full of unrelated objects), and the
keys still unknown then, like those of small groups, are HEAD requests, a bounded pool of
`max_workers` at a time. A listed object's meta carries what LIST tells (size, ETag, last
modified), not its checksum: callers that need the CRC32C HEAD the object.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from storage_core.errors import ObjectNotFound
from storage_core.stores.base import Head, List, ObjectMeta

LIST_AT_LEAST = 8  # below it a few HEADs cost less than a LIST page
LIST_BUDGET_FACTOR = 20  # entries read per wanted key before the listing gives up on a group
MAX_WORKERS = 8


def folder_of(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


def find_objects(store: Head | List, keys: Iterable[str], *, group_of: Callable[[str], str] = folder_of,
                 max_workers: int = MAX_WORKERS) -> dict[str, ObjectMeta]:
    """{key: meta} of the `keys` present in `store`; absent keys are left out. Errors other
    than 'not found' propagate (the first one raised)."""
    groups: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        groups[group_of(key)].add(key)
    found: dict[str, ObjectMeta] = {}
    unknown: list[str] = []
    listable = isinstance(store, List)
    for prefix, wanted in sorted(groups.items()):
        if not listable or len(wanted) < LIST_AT_LEAST:
            unknown.extend(wanted)
            continue
        seen, budget = 0, LIST_BUDGET_FACTOR * len(wanted) + 1000
        left = set(wanted)
        for meta in store.list(prefix):
            if meta.key in left:
                found[meta.key] = meta
                left.discard(meta.key)
            seen += 1
            if not left:
                break
            if seen >= budget:  # a crowded folder: HEAD what is still unknown
                unknown.extend(left)
                break
    if unknown:
        found.update(_heads(store, sorted(unknown), max_workers))
    return found


def _heads(store: Head, keys: list[str], max_workers: int) -> dict[str, ObjectMeta]:
    def head(key: str) -> ObjectMeta | None:
        try:
            return store.head(key)
        except ObjectNotFound:
            return None

    if len(keys) == 1 or max_workers <= 1:
        metas = [head(k) for k in keys]
    else:
        with ThreadPoolExecutor(min(max_workers, len(keys)), thread_name_prefix="ferry-head") as pool:
            metas = list(pool.map(head, keys))
    return {meta.key: meta for meta in metas if meta is not None}


__all__ = ["LIST_AT_LEAST", "LIST_BUDGET_FACTOR", "find_objects", "folder_of"]
