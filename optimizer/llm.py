"""Every LLM call the optimizer makes: cache, budget, concurrency, backoff, JSON dialects.

The seam is :class:`Transport`: the real one wraps the official ``openai`` async SDK,
tests plug in a scripted fake. :class:`LLMClient` sits on top and owns everything that
must behave the same whatever the transport:

- a diskcache cache keyed by the sha256 of the sorted request (endpoint identity,
  model, kind, body incl. sampling params and response_format; never credentials).
  A call is written to the cache the moment it completes, so a killed run loses
  nothing that was already computed;
- the budget (``--max-calls``, ``--max-tokens``), charged for fresh calls only;
- an asyncio semaphore (``--concurrency``) and exponential backoff with full jitter on
  429/5xx (a ``Retry-After`` is honoured);
- structured output: ``response_format`` in the endpoint's dialect, pydantic
  validation, a corrective retry, then tolerant extraction; failures are counted and
  returned as ``None``, never turned into a number.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import diskcache
import orjson
from pydantic import BaseModel, ValidationError

from optimizer.errors import BudgetExceeded, LLMCallError, RequestRejected, TransientLLMError
from prompts.dialects import LLAMACPP, kind_from_owners, llamacpp_json_format

logger = logging.getLogger(__name__)

JsonDialect = Literal["auto", "json_schema", "json_object", "none"]
Kind = Literal["chat", "completion"]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Endpoint:
    """One role's OpenAI-compatible endpoint.

    ``identity`` names the endpoint in cache keys; it defaults to ``base_url`` but the
    embedded backend (a new port every start) uses a stable name so a resumed run hits
    the cache.
    """

    role: str
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False, compare=False)
    dialect: JsonDialect = "auto"
    identity: str = ""

    @property
    def cache_identity(self) -> str:
        return self.identity or self.base_url


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached: bool = False


class Transport(Protocol):
    """Sends one request. Raises TransientLLMError (retry) or RequestRejected (4xx)."""

    async def create(self, endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> Completion: ...

    async def model_owners(self, endpoint: Endpoint) -> list[str]: ...

    async def aclose(self) -> None: ...


@dataclass
class Counters:
    """What the run has spent. ``fresh`` calls reached a backend; ``cached`` did not."""

    fresh_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    transient_retries: int = 0
    parse_retries: int = 0
    parse_recovered: int = 0
    parse_failures: int = 0
    by_role: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Budget:
    max_calls: int | None = None
    max_tokens: int | None = None
    # Set from outside (a signal handler) to stop the run like a spent budget: cleanly, resumable.
    stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def check(self, counters: Counters, in_flight: int) -> None:
        if self.stop_reason is not None:
            raise BudgetExceeded(self.stop_reason)
        if self.max_calls is not None and counters.fresh_calls + in_flight >= self.max_calls:
            raise BudgetExceeded(f"call budget of {self.max_calls} used up")
        if self.max_tokens is not None and counters.tokens >= self.max_tokens:
            raise BudgetExceeded(f"token budget of {self.max_tokens} used up")


def request_key(endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> str:
    """sha256 of the full request, keys sorted; credentials are not part of it."""
    payload = {"endpoint": endpoint.cache_identity, "model": endpoint.model, "kind": kind, "body": body}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class LLMCache:
    """Completed calls on disk (JSON values), plus small memo entries (dialects, aspects)."""

    def __init__(self, directory: Path | str) -> None:
        self._cache = diskcache.Cache(str(directory), timeout=30)

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._cache.get(key)
        return None if raw is None else dict(orjson.loads(raw))

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._cache.set(key, orjson.dumps(value))

    def close(self) -> None:
        self._cache.close()


# -- JSON helpers ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def strict_json(text: str) -> Any:
    """The reply as JSON, allowing only surrounding whitespace and a code fence."""
    return json.loads(_FENCE.sub("", text.strip()))


def extract_json_object(text: str) -> Any:
    """The first complete JSON object anywhere in ``text`` (tolerant fallback).

    Non-strict decoding also accepts raw newlines and tabs inside strings, the most common
    defect of small models' JSON (seen on 7 of 580 calls of a default SmolLM2 run).
    """
    decoder = json.JSONDecoder(strict=False)
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise ValueError("no JSON object found")


def _strip_keys(schema: Any, keys: frozenset[str]) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_keys(v, keys) for k, v in schema.items() if k not in keys}
    if isinstance(schema, list):
        return [_strip_keys(v, keys) for v in schema]
    return schema


# OpenAI's strict mode rejects length limits; llama.cpp's grammar uses them to keep a
# small model from rambling inside a string until max_tokens cuts the JSON short.
_STRICT_UNSUPPORTED = frozenset({"maxLength", "minLength", "maxItems", "minItems"})


def response_format(dialect: JsonDialect, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    if dialect == "json_schema":
        strict_schema = _strip_keys(schema, _STRICT_UNSUPPORTED)
        return {"type": "json_schema", "json_schema": {"name": name, "schema": strict_schema, "strict": True}}
    if dialect == "json_object":
        return llamacpp_json_format(schema)
    return None


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """A structured reply: ``value`` is None when every attempt failed."""

    value: M | None
    attempts: int
    recovered: bool = False
    error: str | None = None


# -- backoff ---------------------------------------------------------------------------------------

MAX_BACKOFF = 30.0  # seconds: the longest computed wait between two attempts
MAX_RETRY_AFTER = 120.0  # seconds: the longest server-requested wait we honour


def backoff_delay(attempt: int, base: float, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt + 1``.

    Full jitter (uniform in ``[0, min(cap, base * 2**attempt)]``): calls that failed
    together after one 429 spread out instead of retrying in lockstep. A server's
    ``Retry-After`` is a lower bound: we wait that long plus a jitter of up to itself,
    at most ``base`` (so ``Retry-After: 0`` still means "now").
    """
    if retry_after is not None and retry_after >= 0:
        wait = min(retry_after, MAX_RETRY_AFTER)
        return wait + rng.uniform(0.0, min(base, wait))
    return rng.uniform(0.0, min(MAX_BACKOFF, base * 2**attempt))


# -- the client --------------------------------------------------------------------------------------


class LLMClient:
    def __init__(
        self,
        transport: Transport,
        cache: LLMCache | None = None,
        budget: Budget | None = None,
        concurrency: int = 4,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        json_retries: int = 1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.cache = cache
        self.budget = budget or Budget()
        self.counters = Counters()
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._json_retries = json_retries
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._in_flight = 0
        self._dialects: dict[str, JsonDialect] = {}
        self._dialect_locks: dict[str, asyncio.Lock] = {}
        self._confirmed: set[str] = set()
        self.on_call: Callable[[], None] | None = None

    async def generate(self, endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> Completion:
        """One call, answered from the cache when possible."""
        key = "llm:" + request_key(endpoint, kind, body)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                done = Completion(**{**hit, "cached": True})
                self.counters.cached_calls += 1
                self.counters.cached_tokens += done.prompt_tokens + done.completion_tokens
                self._notify()
                return done
        async with self._semaphore:
            self.budget.check(self.counters, self._in_flight)
            self._in_flight += 1
            try:
                result = await self._send_with_backoff(endpoint, kind, body)
            finally:
                self._in_flight -= 1
        if self.cache is not None:
            self.cache.set(key, {k: v for k, v in asdict(result).items() if k != "cached"})
        counters = self.counters
        counters.fresh_calls += 1
        counters.prompt_tokens += result.prompt_tokens
        counters.completion_tokens += result.completion_tokens
        counters.by_role[endpoint.role] = counters.by_role.get(endpoint.role, 0) + 1
        self._notify()
        return result

    def _notify(self) -> None:
        if self.on_call is not None:
            self.on_call()

    async def _send_with_backoff(self, endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> Completion:
        for attempt in range(self._max_attempts):
            try:
                return await self.transport.create(endpoint, kind, body)
            except TransientLLMError as exc:
                if attempt + 1 >= self._max_attempts:
                    raise LLMCallError(f"{endpoint.role} endpoint kept failing: {exc}") from exc
                delay = backoff_delay(attempt, self._backoff_base, exc.retry_after, self._rng)
                self.counters.transient_retries += 1
                logger.warning("%s call failed (%s); retrying in %.1fs", endpoint.role, exc, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")

    # -- structured output ------------------------------------------------------------------------

    async def dialect_for(self, endpoint: Endpoint) -> JsonDialect:
        if endpoint.dialect != "auto":
            return endpoint.dialect
        ident = endpoint.cache_identity + "|" + endpoint.model
        if ident in self._dialects:
            return self._dialects[ident]
        memo_key = "dialect:" + hashlib.sha256(ident.encode()).hexdigest()
        if self.cache is not None and (hit := self.cache.get(memo_key)) is not None:
            self._dialects[ident] = hit["dialect"]
            self._confirmed.add(ident)
            return self._dialects[ident]
        owners = await self.transport.model_owners(endpoint)
        # llama.cpp's servers speak json_object + schema; anything else starts with json_schema.
        dialect: JsonDialect = "json_object" if kind_from_owners(owners) == LLAMACPP else "json_schema"
        self._remember_dialect(ident, memo_key, dialect)
        return dialect

    def _remember_dialect(self, ident: str, memo_key: str, dialect: JsonDialect) -> None:
        self._dialects[ident] = dialect
        if self.cache is not None:
            self.cache.set(memo_key, {"dialect": dialect})

    async def structured(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
        model: type[M],
        params: dict[str, Any],
        check: Callable[[M], str | None] | None = None,
    ) -> Parsed[M]:
        """A JSON reply validated as ``model``; ``check`` adds semantic validation."""
        ident = endpoint.cache_identity + "|" + endpoint.model
        if endpoint.dialect == "auto" and ident not in self._confirmed:
            # The first structured call per endpoint settles the dialect before others go,
            # so a fallback (json_schema rejected -> json_object) happens once.
            async with self._dialect_locks.setdefault(ident, asyncio.Lock()):
                if ident not in self._confirmed:
                    result = await self._structured(endpoint, messages, schema_name, schema, model, params, check)
                    self._confirmed.add(ident)
                    return result
        return await self._structured(endpoint, messages, schema_name, schema, model, params, check)

    async def _structured(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
        model: type[M],
        params: dict[str, Any],
        check: Callable[[M], str | None] | None,
    ) -> Parsed[M]:
        texts: list[str] = []
        error = "no reply"
        convo = list(messages)
        for attempt in range(1 + self._json_retries):
            text = await self._structured_call(endpoint, convo, schema_name, schema, params)
            texts.append(text)
            value, error = _validate(model, check, strict_json, text)
            if value is not None:
                return Parsed(value, attempt + 1)
            if attempt < self._json_retries:
                self.counters.parse_retries += 1
                convo = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": _retry_instruction(error)},
                ]
        for text in texts:
            value, _ = _validate(model, check, extract_json_object, text)
            if value is not None:
                self.counters.parse_recovered += 1
                return Parsed(value, len(texts), recovered=True)
        self.counters.parse_failures += 1
        logger.warning("%s reply failed validation after %d attempts: %s", endpoint.role, len(texts), error)
        return Parsed(None, len(texts), error=error)

    async def _structured_call(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
        params: dict[str, Any],
    ) -> str:
        dialect = await self.dialect_for(endpoint)
        while True:
            body: dict[str, Any] = {"model": endpoint.model, "messages": messages, **params}
            fmt = response_format(dialect, schema_name, schema)
            if fmt is not None:
                body["response_format"] = fmt
            try:
                return (await self.generate(endpoint, "chat", body)).text
            except RequestRejected as exc:
                fallback = _FALLBACK.get(dialect) if endpoint.dialect == "auto" else None
                if fallback is None or not 400 <= exc.status < 500:
                    raise
                logger.info(
                    "%s endpoint rejected %s (HTTP %d); trying %s", endpoint.role, dialect, exc.status, fallback
                )
                ident = endpoint.cache_identity + "|" + endpoint.model
                self._remember_dialect(ident, "dialect:" + hashlib.sha256(ident.encode()).hexdigest(), fallback)
                dialect = fallback


_FALLBACK: dict[JsonDialect, JsonDialect] = {"json_schema": "json_object", "json_object": "none"}


def _retry_instruction(error: str) -> str:
    return (
        "Your reply could not be used: "
        + error[:300]
        + "\nReply again with only the JSON object described earlier, nothing before or after it."
    )


def _validate(
    model: type[M], check: Callable[[M], str | None] | None, parse: Callable[[str], Any], text: str
) -> tuple[M | None, str]:
    try:
        value = model.model_validate(parse(text))
    except (ValueError, ValidationError) as exc:
        return None, f"invalid JSON for the schema ({str(exc).splitlines()[0][:200]})"
    if check is not None and (problem := check(value)) is not None:
        return None, problem
    return value, ""


# -- running many calls ------------------------------------------------------------------------------


async def run_all(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Run awaitables concurrently; results in input order, so completion order never matters.

    If any fails, the rest are cancelled and one exception is raised (a budget stop wins,
    so callers can checkpoint and stop cleanly).
    """

    async def wrap(aw: Awaitable[T]) -> T:
        return await aw

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(wrap(c)) for c in coros]
    except BaseExceptionGroup as eg:
        budget = eg.subgroup(BudgetExceeded)
        if budget is not None:
            raise _first(budget) from None
        raise _first(eg) from None
    return [t.result() for t in tasks]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
