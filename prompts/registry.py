"""A shared registry on Redis: many proxy replicas, one history of prompt versions.

Each replica keeps its diskcache store (``prompts/store.py``) as its local copy: the proxy
serves from it and keeps serving from it when Redis is down. With a registry configured,
Redis is the source of truth and every local store is a mirror of it:

- **Redis holds** the mirrored keys of the store verbatim (the hash ``drpo:registry:data``,
  field = store key, value = a type tag and the value, see :func:`encode`), a revision
  counter, a random registry id, and for each recent revision the batch of keys it changed
  (``drpo:registry:batch:<rev>``, the last :data:`BATCHES_KEPT`).
- **A local store remembers** which registry it mirrors and up to which revision
  (``["registry-sync"]``, a local-only key), so catching up means applying the batches after
  it, each in one store transaction with the new mark; a copy too far behind, or of another
  registry, is replaced by the registry's content in one transaction.
- **A change** (``PromptStore`` writes run in :meth:`Registry.change`) takes a lock in Redis,
  opens the local transaction, catches up, runs the change while the cache records what it
  writes, and publishes that batch with a Lua script that checks the lock, the registry id and
  the revision it was based on, applies the batch, bumps the revision and notifies the
  ``drpo:registry:changes`` channel, all atomically. Only then does the local transaction
  commit. Append-log sequence numbers are computed from the caught-up copy under the lock,
  so writers on different replicas never collide. If Redis cannot be reached the change is
  refused with :class:`RegistryUnavailable` and nothing changes anywhere: a promotion either
  reaches the registry (and so every replica) or fails loudly, and replicas never diverge.
  If the reply is lost after Redis applied it, the local copy rolls back and gets the change
  from Redis on its next catch-up: nothing is half-applied.
- **Followers** (:class:`RegistryFollower`, run by the proxy) listen on the channel and also
  check the revision every ``check_interval`` seconds, so a lost message or a reconnect
  costs at most that delay.
- **If Redis lost its data** (restarted without persistence), the first replica that
  reconnects re-seeds it from its local copy, keeping the registry id and revision; the
  others see they are current again. Run Redis with persistence in production anyway: a
  replica that was behind when it re-seeded would win over newer copies.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from prompts.errors import RegistryConflict, RegistryUnavailable
from prompts.store_layout import REGISTRY_SYNC_KEY, JournalingCache, Value, is_mirrored

logger = logging.getLogger(__name__)

PREFIX = "drpo:registry:"
CHANNEL = PREFIX + "changes"
BATCHES_KEPT = 1000  # a replica further behind than this reloads the whole registry
LOCK_TTL_MS = 15_000
SCHEMES = ("redis://", "rediss://", "unix://")

# Atomic publish of one change. KEYS: id, revision, data, lock.
# ARGV: lock token, registry id, base revision, batch key prefix, channel, batches kept, field/value pairs.
_PUBLISH = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return -2 end
local rev = tonumber(redis.call('GET', KEYS[2]) or '0')
if rev ~= tonumber(ARGV[3]) then return -3 end
rev = rev + 1
local batch = ARGV[4] .. rev
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == 'd' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  else
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  redis.call('HSET', batch, ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], rev)
local old = rev - tonumber(ARGV[6])
if old > 0 then redis.call('DEL', ARGV[4] .. old) end
redis.call('PUBLISH', ARGV[5], rev)
return rev
"""

# Seed an empty registry from one local copy. KEYS: id, revision, data.
# ARGV: registry id, revision, channel, field/value pairs. Returns 0 if someone seeded it first.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def encode(value: Value | None) -> bytes:
    """A store value as Redis bytes: a type tag, then the value (``d`` alone: deleted)."""
    if value is None:
        return b"d"
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, bool):  # a bool is an int to Python, but the store never writes one
        raise TypeError("the store has no boolean values")
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, str):
        return b"s" + value.encode()
    raise TypeError(f"cannot mirror a store value of type {type(value).__name__}")


def decode(raw: bytes) -> Value | None:
    tag, body = raw[:1], raw[1:]
    if tag == b"b":
        return body
    if tag == b"i":
        return int(body)
    if tag == b"s":
        return body.decode()
    if tag == b"d":
        return None
    raise ValueError(f"unknown registry value tag {tag!r}")


@dataclass(frozen=True)
class SyncMark:
    """Which registry a local copy mirrors, and the last revision it holds."""

    registry: str
    revision: int


def read_mark(cache: JournalingCache) -> SyncMark | None:
    raw = cache.get(REGISTRY_SYNC_KEY)
    if raw is None:
        return None
    data = orjson.loads(raw)
    return SyncMark(str(data["registry"]), int(data["revision"]))


def _write_mark(cache: JournalingCache, mark: SyncMark) -> None:
    cache.set(REGISTRY_SYNC_KEY, orjson.dumps({"registry": mark.registry, "revision": mark.revision}))


def redacted(url: str) -> str:
    """Where the registry is, without credentials (for messages and /ready)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Registry:
    """One Redis registry; thread-safe (redis-py pools connections), shared per URL in a process."""

    _shared: ClassVar[dict[str, Registry]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, timeout: float = 2.0, lock_wait: float = 10.0) -> None:
        if not url.startswith(SCHEMES):
            raise ValueError(f"a registry URL starts with {', '.join(SCHEMES)}")
        self.location = redacted(url)
        self.lock_wait = lock_wait
        # Few, quick retries: a write against a dead Redis should fail in seconds, not minutes.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            health_check_interval=30,
        )
        self._publish = self.client.register_script(_PUBLISH)
        self._seed = self.client.register_script(_SEED)
        self._release = self.client.register_script(_RELEASE)
        self._keys = {name: PREFIX + name for name in ("id", "revision", "data", "lock")}

    @classmethod
    def shared(cls, url: str) -> Registry:
        """The process's client for ``url`` (every store opened on it shares one connection pool)."""
        with cls._shared_lock:
            registry = cls._shared.get(url)
            if registry is None:
                registry = cls._shared[url] = cls(url)
            return registry

    def close(self) -> None:
        self.client.close()

    def unavailable(self, exc: Exception) -> RegistryUnavailable:
        return RegistryUnavailable(f"the prompt registry at {self.location} cannot be reached ({exc})")

    # -- reading -----------------------------------------------------------------

    def head(self) -> tuple[str | None, int]:
        """The registry's id (None: empty, never seeded or lost its data) and revision."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self._keys["id"])
        pipe.get(self._keys["revision"])
        registry_id, revision = pipe.execute()
        return (None if registry_id is None else registry_id.decode()), int(revision or 0)

    def _batches(self, registry_id: str, after: int, upto: int) -> list[tuple[int, dict[bytes, bytes]]] | None:
        """Batches ``after+1..upto``; None when the registry changed identity or dropped one of them."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self._keys["id"])
        for revision in range(after + 1, upto + 1):
            pipe.hgetall(f"{PREFIX}batch:{revision}")
        current_id, *batches = pipe.execute()
        if current_id is None or current_id.decode() != registry_id or not all(batches):
            return None
        return list(zip(range(after + 1, upto + 1), batches, strict=True))

    def _everything(self) -> tuple[str | None, int, dict[bytes, bytes]]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self._keys["id"])
        pipe.get(self._keys["revision"])
        pipe.hgetall(self._keys["data"])
        registry_id, revision, data = pipe.execute()
        return (None if registry_id is None else registry_id.decode()), int(revision or 0), data

    # -- catching up ---------------------------------------------------------------

    def sync(self, cache: JournalingCache) -> str:
        """Bring the local copy up to the registry: "current", "updated", "replaced" or "seeded"."""
        try:
            return self._sync(cache)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc

    def _sync(self, cache: JournalingCache, attempts: int = 3) -> str:
        registry_id, revision = self.head()
        mark = read_mark(cache)
        if registry_id is None:
            if self._seed_from(cache):
                return "seeded"
            return self._sync(cache, attempts - 1) if attempts > 1 else "current"
        if mark is not None and mark.registry == registry_id:
            if mark.revision == revision:
                return "current"
            if mark.revision < revision <= mark.revision + BATCHES_KEPT:
                batches = self._batches(registry_id, mark.revision, revision)
                if batches is not None and _apply_batches(cache, registry_id, batches):
                    return "updated"
        self._replace_from_registry(cache, mark)
        return "replaced"

    def _seed_from(self, cache: JournalingCache) -> bool:
        """Fill an empty registry with this copy (keeping its id and revision if it had one)."""
        with cache.transact():
            mark = read_mark(cache) or SyncMark(secrets.token_hex(8), 0)
            args: list[Any] = [mark.registry, mark.revision, CHANNEL]
            for name in list(cache.iterkeys()):
                if is_mirrored(name):
                    args += [name, encode(cache.get(name))]
            keys = [self._keys["id"], self._keys["revision"], self._keys["data"]]
            if not self._seed(keys=keys, args=args):
                return False
            _write_mark(cache, mark)
        logger.warning(
            "prompt registry at %s was empty: seeded it from this copy (revision %d)", self.location, mark.revision
        )
        return True

    def _replace_from_registry(self, cache: JournalingCache, mark: SyncMark | None) -> None:
        registry_id, revision, data = self._everything()
        if registry_id is None:
            return  # emptied meanwhile: the next sync seeds it
        wanted = {field.decode(): decode(value) for field, value in data.items()}
        with cache.transact():
            dropped = [name for name in cache.iterkeys() if is_mirrored(name) and name not in wanted]
            for name in dropped:
                cache.delete(name)
            for name, value in wanted.items():
                if cache.get(name) != value:
                    cache.set(name, value)
            _write_mark(cache, SyncMark(registry_id, revision))
        if mark is not None or dropped:
            logger.warning(
                "local prompt store replaced by the registry at %s (revision %d; %d local-only key(s) dropped)",
                self.location,
                revision,
                len(dropped),
            )

    # -- changing ------------------------------------------------------------------

    @contextmanager
    def change(self, cache: JournalingCache) -> Iterator[None]:
        """Run one store change against the registry; see the module docstring for the steps."""
        token = secrets.token_hex(16)
        try:
            self._acquire(token)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc
        try:
            with cache.transact():
                try:
                    self._sync(cache)
                except redis.RedisError as exc:
                    raise self.unavailable(exc) from exc
                mark = read_mark(cache)
                if mark is None:  # only if the registry vanished between two reads
                    raise RegistryConflict("the registry changed while catching up; nothing was changed, try again")
                cache.journal = {}
                try:
                    yield
                    changes = cache.journal
                finally:
                    cache.journal = None
                if changes:
                    _write_mark(cache, SyncMark(mark.registry, self._publish_batch(token, mark, changes)))
        finally:
            self._release_quietly(token)

    def _acquire(self, token: str) -> None:
        deadline = time.monotonic() + self.lock_wait
        while not self.client.set(self._keys["lock"], token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() > deadline:
                raise RegistryConflict(
                    f"another change has held the registry at {self.location} for over {self.lock_wait:g} s; "
                    "nothing was changed, try again"
                )
            time.sleep(0.02)

    def _release_quietly(self, token: str) -> None:
        with suppress(redis.RedisError):  # else the lock expires by itself
            self._release(keys=[self._keys["lock"]], args=[token])

    def _publish_batch(self, token: str, mark: SyncMark, changes: dict[str, Value | None]) -> int:
        args: list[Any] = [token, mark.registry, mark.revision, PREFIX + "batch:", CHANNEL, BATCHES_KEPT]
        for name, value in changes.items():
            args += [name, encode(value)]
        keys = [self._keys["id"], self._keys["revision"], self._keys["data"], self._keys["lock"]]
        try:
            revision = int(self._publish(keys=keys, args=args))
        except redis.RedisError as exc:
            # Redis may or may not have applied it; either way the local copy rolls back and
            # the next catch-up brings whatever the registry holds.
            raise self.unavailable(exc) from exc
        if revision < 0:
            reason = {-1: "the lock expired", -2: "the registry was reset", -3: "its revision moved"}[revision]
            raise RegistryConflict(f"the registry refused the change ({reason}); nothing was changed, try again")
        return revision


def _apply_batches(cache: JournalingCache, registry_id: str, batches: list[tuple[int, dict[bytes, bytes]]]) -> bool:
    """Apply the batches this copy lacks in one transaction; False if they do not follow its mark."""
    with cache.transact():
        mark = read_mark(cache)
        if mark is None or mark.registry != registry_id:
            return False
        pending = [(revision, batch) for revision, batch in batches if revision > mark.revision]
        if [revision for revision, _ in pending] != list(range(mark.revision + 1, mark.revision + 1 + len(pending))):
            return False
        for _, batch in pending:
            for field, raw in batch.items():
                value = decode(raw)
                if value is None:
                    cache.delete(field.decode())
                else:
                    cache.set(field.decode(), value)
        if pending:
            _write_mark(cache, SyncMark(registry_id, pending[-1][0]))
    return True


class RegistryFollower:
    """Keeps one local store in step with the registry in a background thread.

    It listens on the change channel and also checks the revision every ``check_interval``
    seconds (a lost message, a reconnect); ``on_change(replaced)`` is called after the local
    copy changed (``replaced``: reloaded whole, so the generation alone may not show it).
    While Redis is down it retries with a growing pause and the copy stays as it is.
    """

    def __init__(
        self,
        registry: Registry,
        cache: JournalingCache,
        on_change: Callable[[bool], object],
        check_interval: float = 1.0,
    ) -> None:
        self.registry = registry
        self._cache = cache
        self._on_change = on_change
        self._check_interval = check_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.revision: int | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drpo-registry-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self) -> dict[str, Any]:
        return {"url": self.registry.location, "connected": self.connected, "revision": self.revision}

    def sync_once(self) -> None:
        """One catch-up; raises :class:`RegistryUnavailable` when Redis cannot be reached."""
        outcome = self.registry.sync(self._cache)
        mark = read_mark(self._cache)
        self.revision = None if mark is None else mark.revision
        if not self.connected:
            logger.info("prompt registry at %s connected (revision %s)", self.registry.location, self.revision)
        self.connected = True
        if outcome in ("updated", "replaced"):
            self._on_change(outcome == "replaced")

    def _run(self) -> None:
        pause = 0.2
        while not self._stop.is_set():
            pubsub = self.registry.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(CHANNEL)
                while not self._stop.is_set():
                    self.sync_once()
                    pause = 0.2
                    if pubsub.get_message(timeout=self._check_interval) is not None:
                        while pubsub.get_message(timeout=0.0) is not None:
                            pass  # one catch-up covers every message waiting
            except (redis.RedisError, RegistryUnavailable, OSError) as exc:
                if self.connected:
                    logger.warning(
                        "prompt registry at %s lost (%s); serving the local copy", self.registry.location, exc
                    )
                self.connected = False
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)
            except Exception:
                logger.exception("prompt registry follower failed; retrying")
                self.connected = False
                self._stop.wait(5.0)
            finally:
                with suppress(redis.RedisError):
                    pubsub.close()
