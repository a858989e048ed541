"""How the prompt store lays out its data in diskcache: settings, keys and append-only logs.

Three rules keep every write atomic for readers and crashes, and every write cheap:

1. **Every value lives inside SQLite.** diskcache writes values of ``disk_min_file_size``
   bytes or more (32 KiB by default) to separate files, and a ``set`` inside ``transact()``
   deletes the replaced file before the outer transaction commits: a crash, or a reader in
   another process, then finds a row that points at a missing file. With the threshold far
   above any value we store, diskcache never creates or deletes a file, so one
   ``transact()`` is one SQLite transaction and nothing else: all of it or none of it.
2. **Nothing is ever evicted.** diskcache culls entries past its ``size_limit`` by default;
   that would silently delete "immutable" versions. ``eviction_policy="none"`` turns the
   policy off and ``cull_limit=0`` skips the cull pass entirely. Reads then never write
   (no access-time updates), so readers never contend with writers.
3. **No value grows with history.** Versions and activations are append-only logs: one
   row per entry plus a per-owner counter (:class:`AppendLog`), so a write costs the same
   at entry 10 as at entry 10,000 and no row is ever rewritten except small counters and
   pointers. Readers read the counter, then rows up to it; rows below a committed counter
   are immutable, so separate reads still see a consistent prefix.

Keys are strings: the JSON encoding of an array, e.g. ``["artifact","org/m:q4","3f2a..."]``,
unambiguous whatever characters a model id holds. diskcache pickles any key that is not
a string, bytes or a number; string keys keep the store free of pickle. Values are JSON
bytes, ints or strings, so a mirror (e.g. Redis) can copy key → value verbatim.

A new kind of record (an audit log, A/B splits, eval reports...) is one more
:class:`AppendLog` with its own ``kind`` and nothing else to design.

With a shared registry (``prompts/registry.py``) every key is mirrored to Redis except the
local-only ones (:data:`LOCAL_ONLY_KEYS`: the layout version and how far this copy has synced);
:class:`JournalingCache` records the keys a change writes so they can be published as one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import diskcache
import orjson

SCHEMA_VERSION = 2

# Larger than any value we write (SQLite itself refuses values over ~1 GB), so every value
# is stored inline in the database row, never as a separate file.
INLINE_EVERYTHING = 2**40

CACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "cull_limit": 0,
    "disk_min_file_size": INLINE_EVERYTHING,
}


def key(*parts: str | int) -> str:
    """The string key for a record: a JSON array of its parts."""
    return orjson.dumps(list(parts)).decode()


SCHEMA_KEY = key("schema")
GENERATION_KEY = key("generation")
MODELS_KEY = key("models")
# Present while keys of the old (schema 1) layout remain to be deleted after a migration.
LEGACY_CLEANUP_KEY = key("legacy-cleanup")
# Which registry this copy mirrors and up to which of its revisions (``prompts/registry.py``).
REGISTRY_SYNC_KEY = key("registry-sync")
LOCAL_ONLY_KEYS = frozenset({SCHEMA_KEY, LEGACY_CLEANUP_KEY, REGISTRY_SYNC_KEY})

Value = bytes | int | str


def is_mirrored(name: object) -> bool:
    """Whether a cache key is shared through a registry (old-layout tuple keys never are)."""
    return isinstance(name, str) and name.startswith("[") and name not in LOCAL_ONLY_KEYS


def artifact_key(model: str, version: str) -> str:
    return key("artifact", model, version)


def version_index_key(model: str, version: str) -> str:
    """Version id → its sequence number in the model's version log (exact look-up)."""
    return key("version-seq", model, version)


def split_key(model: str) -> str:
    """A model's A/B split over versions (a small JSON value, replaced as a whole)."""
    return key("split", model)


def active_key(model: str) -> str:
    return key("active", model)


class JournalingCache(diskcache.Cache):  # type: ignore[misc]
    """A diskcache that can record what a change writes: ``{key: value}``, ``None`` for a delete.

    Recording is off unless :attr:`journal` is a dict (set by the registry around one change,
    on the thread that runs it), so a store without a registry pays one attribute check.
    """

    journal: dict[str, Value | None] | None = None

    def set(self, key: Any, value: Any, *args: Any, **kwargs: Any) -> bool:
        if self.journal is not None and is_mirrored(key):
            self.journal[key] = value
        return bool(super().set(key, value, *args, **kwargs))

    def delete(self, key: Any, *args: Any, **kwargs: Any) -> bool:
        if self.journal is not None and is_mirrored(key):
            self.journal[key] = None
        return bool(super().delete(key, *args, **kwargs))


def open_cache(directory: Path) -> JournalingCache:
    """The store's cache, with every value inline and eviction off (see the module docstring)."""
    return JournalingCache(str(directory), timeout=30, **CACHE_SETTINGS)


def load_json(cache: diskcache.Cache, name: str, default: Any) -> Any:
    raw = cache.get(name)
    return default if raw is None else orjson.loads(raw)


class AppendLog:
    """An append-only sequence of JSON records per owner (e.g. per model id).

    Entry ``seq`` (from 1) of ``owner`` is the row ``[kind, owner, seq]``; the number of
    entries is the row ``["count", kind, owner]``. :meth:`append` must run inside the
    cache's ``transact()`` together with whatever else the change writes.
    """

    def __init__(self, cache: diskcache.Cache, kind: str) -> None:
        self._cache = cache
        self.kind = kind

    def _row(self, owner: str, seq: int) -> str:
        return key(self.kind, owner, seq)

    def _count_key(self, owner: str) -> str:
        return key("count", self.kind, owner)

    def count(self, owner: str) -> int:
        return int(self._cache.get(self._count_key(owner), 0))

    def get(self, owner: str, seq: int) -> dict[str, Any] | None:
        raw = self._cache.get(self._row(owner, seq))
        return None if raw is None else dict(orjson.loads(raw))

    def last(self, owner: str) -> tuple[int, dict[str, Any]] | None:
        seq = self.count(owner)
        record = self.get(owner, seq) if seq else None
        return None if record is None else (seq, record)

    def entries(self, owner: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every entry in order, up to the count read when iteration starts."""
        for seq in range(1, self.count(owner) + 1):
            record = self.get(owner, seq)
            if record is not None:
                yield seq, record

    def append(self, owner: str, record: Mapping[str, Any]) -> int:
        seq = self.count(owner) + 1
        self._cache.set(self._row(owner, seq), orjson.dumps(dict(record)))
        self._cache.set(self._count_key(owner), seq)
        return seq
