"""storage_core.stores.lookup.find_objects: which keys exist, by LIST where a folder holds
many of them, by HEAD for a few, and never by reading a crowded folder to its end."""

from __future__ import annotations

import threading

from storage_core.errors import ObjectNotFound
from storage_core.stores.base import ObjectMeta
from storage_core.stores.lookup import LIST_AT_LEAST, LIST_BUDGET_FACTOR, find_objects


class Store:
    """Objects in memory; counts HEADs and the entries each LIST handed out."""

    def __init__(self, keys) -> None:  # noqa: ANN001
        self.objects = {k: ObjectMeta(k, 1, f'"{k}"') for k in keys}
        self.heads, self.listed = 0, 0
        self._lock = threading.Lock()

    def head(self, key: str) -> ObjectMeta:
        with self._lock:
            self.heads += 1
        if key not in self.objects:
            raise ObjectNotFound(key, key=key)
        return self.objects[key]

    def list(self, prefix: str = ""):  # noqa: ANN201
        for key in sorted(self.objects):
            if key.startswith(prefix):
                self.listed += 1
                yield self.objects[key]


def test_a_folder_of_many_keys_is_listed_not_headed():
    wanted = [f"d/run/{n:04d}" for n in range(1000)]
    store = Store(wanted[::2])
    found = find_objects(store, wanted)
    assert sorted(found) == wanted[::2] and store.heads == 0 and store.listed == 500


def test_the_listing_stops_once_every_key_was_seen():
    store = Store([f"d/run/{n:04d}" for n in range(10_000)])
    wanted = [f"d/run/{n:04d}" for n in range(LIST_AT_LEAST)]
    assert sorted(find_objects(store, wanted)) == wanted
    assert store.listed == LIST_AT_LEAST and store.heads == 0


def test_a_crowded_folder_falls_back_to_heads_within_its_budget():
    store = Store([f"d/run/old-{n:06d}" for n in range(50_000)] + ["d/run/zz-new-3"])
    wanted = [f"d/run/zz-new-{n}" for n in range(LIST_AT_LEAST)]  # listed after the old ones
    assert list(find_objects(store, wanted)) == ["d/run/zz-new-3"]
    assert store.listed == LIST_BUDGET_FACTOR * len(wanted) + 1000 and store.heads == len(wanted)


def test_a_few_keys_are_headed_and_groups_follow_group_of():
    store = Store(["a/x", "b/y"])
    assert sorted(find_objects(store, ["a/x", "a/z", "b/y"])) == ["a/x", "b/y"]
    assert store.heads == 3 and store.listed == 0
    store = Store([f"p/r/{n}/f" for n in range(20)])
    keys = [f"p/r/{n}/f" for n in range(20)]  # one folder each, one recording
    assert sorted(find_objects(store, keys, group_of=lambda k: "p/r/")) == sorted(keys)
    assert store.heads == 0
