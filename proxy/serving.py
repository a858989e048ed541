"""The serving class behind the OpenAI routes: parse → route → inject → forward → relay.

Routes in :mod:`proxy.app` are thin; all per-request work is here, written against raw
ASGI so the hot path builds no Request/Response objects and parses the body once with
orjson. Timing: ``overhead`` is everything between the request's arrival and our last
response byte *except* the wait for the backend (send → backend's full body, or send →
backend's headers for streams), which is what ``x-drpo-overhead-ms`` and
``drpo_proxy_overhead_seconds`` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import orjson

from prompts.dialects import rewrite_json_object_schema_format, vllm_completion_format
from prompts.layout import PreparedArtifact, latest_user_text
from prompts.remote_embeddings import BackendEmbeddings
from prompts.retrieval import EncodesQueries, Scores
from proxy.asgi import (
    ClientDisconnected,
    DisconnectWatcher,
    RawHeaders,
    Receive,
    Scope,
    Send,
    is_uuid,
    new_request_id,
    read_body,
    send_bytes,
)
from proxy.auth import KeyChecker
from proxy.errors import (
    BackendError,
    BadBackendResponse,
    InvalidRequest,
    ProxyError,
    error_body,
    error_kind,
    upstream_error,
)
from proxy.injection import Policies, check_messages, completion_body, inject_chat, parse_model
from proxy.llamacpp import UsageFiller, rewrite_response_format
from proxy.metrics import Metrics
from proxy.query_batcher import QueryBatcher
from proxy.routing import Backend, Router
from proxy.snapshot import ArtifactSnapshot
from proxy.streaming import (
    DONE,
    CompletionStreamTranslator,
    EventSplitter,
    MalformedEvent,
    completion_to_chat,
    ends_with_error_event,
    has_done,
    parse_event,
    sse_data,
)
from proxy.upstream import Exchange, Upstream, close_quietly, header_value, iter_raw, read_all

logger = logging.getLogger(__name__)

CHAT_PATH = b"/chat/completions"
COMPLETIONS_PATH = b"/completions"
EMBEDDINGS_PATH = b"/embeddings"
NO_VERSION = "none"

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS: RawHeaders = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_PASSED_BACK = (b"openai-processing-ms", b"retry-after")


@dataclass(slots=True)
class _Call:
    """What one request resolved to, carried from parsing to relaying."""

    request_id: bytes
    request_id_is_uuid: bool
    model: str  # metrics label: the model id once routed, "unknown" before
    version: str
    path: bytes
    payload: bytes
    stream: bool
    translate: bool
    include_usage: bool
    usage: UsageFiller | None = None  # llama.cpp stream that must get a usage chunk from us


class OpenAIServing:
    def __init__(
        self,
        router: Router,
        upstream: Upstream,
        snapshot: ArtifactSnapshot,
        policies: Policies,
        metrics: Metrics,
        keys: KeyChecker,
        max_body_bytes: int,
        embeddings: BackendEmbeddings | None = None,
    ) -> None:
        self.remote_embeddings = embeddings  # for artifacts whose retrieval.method is "backend"
        self.router = router
        self.upstream = upstream
        self.snapshot = snapshot
        self.policies = policies
        self.metrics = metrics
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        # One per query encoder (MiniLM): concurrent requests' messages share a forward pass.
        self.query_batchers: dict[str, QueryBatcher] = {}

    async def _encoded_scores(self, scorer: EncodesQueries, text: str) -> Scores:
        """Scores from a model-encoded query, batched with concurrent requests, off the event loop."""
        batcher = self.query_batchers.get(scorer.encoder)
        if batcher is None:
            batcher = self.query_batchers[scorer.encoder] = QueryBatcher(scorer.encode_queries)
        return scorer.scores_for(await batcher.vector(scorer.query_text(text)))

    # -- entry points -----------------------------------------------------------

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send, inject=True, path=CHAT_PATH)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send, inject=False, path=COMPLETIONS_PATH)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send, inject=False, path=EMBEDDINGS_PATH)

    # -- the request ------------------------------------------------------------

    async def _handle(self, scope: Scope, receive: Receive, send: Send, *, inject: bool, path: bytes) -> None:
        started = perf_counter()
        headers = dict(scope["headers"])
        client_id = usable_request_id(headers.get(b"x-request-id"))
        request_id = client_id or new_request_id()
        model, version = "unknown", NO_VERSION
        watcher: DisconnectWatcher | None = None
        try:
            self.keys.check(headers.get(b"authorization"))
            raw = await read_body(receive, self.max_body_bytes, headers.get(b"content-length"))
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
            name = parse_model(body)
            bypass = inject and self.keys.bypass_requested(headers.get(b"authorization"), headers.get(b"x-drpo-bypass"))
            messages = check_messages(body) if inject and not bypass else None
            backend = await self.router.resolve(name)
            model = name
            id_is_uuid = client_id is None or is_uuid(client_id)
            prepared: PreparedArtifact | None = None
            scores: Scores | None = None
            if messages is not None:
                # An A/B split is sticky per the request's `user` field or x-drpo-session header.
                user = body.get("user")
                sticky = user if isinstance(user, str) and user else _header_text(headers.get(b"x-drpo-session"))
                prepared = self.snapshot.get(name, sticky)
                if prepared.needs_remote_scores and self.remote_embeddings is not None:
                    # retrieval.method "backend": one embeddings call (None: BM25 decides)
                    scores = await self.remote_embeddings.scores(prepared, latest_user_text(messages))
                elif prepared.query_encoder is not None:
                    scores = await self._encoded_scores(prepared.query_encoder, latest_user_text(messages))
            call = self._prepare(request_id, id_is_uuid, backend, body, raw, path, messages, prepared, scores)
            version = call.version
            watcher = DisconnectWatcher(receive)
            backend.in_flight += 1
            try:
                await self._forward(call, backend, headers, send, started, watcher)
            finally:
                backend.in_flight -= 1
        except ProxyError as exc:
            if watcher is not None:
                watcher.stop()
            if isinstance(exc, BackendError):
                self.metrics.backend_error(model, version, error_kind(exc))
            await self._send_error(send, exc, request_id, version)
            self._done(model, version, exc.status_code, started, perf_counter() - started)
        except ClientDisconnected:
            self._done(model, version, 499, started, perf_counter() - started)
        except asyncio.CancelledError:
            if watcher is None or not watcher.disconnected:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._done(model, version, 499, started, perf_counter() - started)
        except Exception:
            # A bug, not a backend failure: answer 500 in OpenAI shape (if nothing was sent yet).
            logger.exception("unexpected error while proxying a request for %s", model)
            self._done(model, version, 500, started, perf_counter() - started)
            with contextlib.suppress(RuntimeError):  # the response had already started
                await self._send_error(send, ProxyError("internal error in the proxy"), request_id, version)
        finally:
            if watcher is not None:
                watcher.stop()

    def _prepare(
        self,
        request_id: bytes,
        id_is_uuid: bool,
        backend: Backend,
        body: dict[str, Any],
        raw: bytes,
        path: bytes,
        messages: list[dict[str, Any]] | None,
        prepared: PreparedArtifact | None = None,
        scores: Scores | None = None,
    ) -> _Call:
        model: str = body["model"]
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        if messages is None:  # bypass or a pass-through endpoint: the bytes go as they came
            if _fix_response_format(backend, path, body):
                raw = _encode(body)
            call = _Call(request_id, id_is_uuid, model, NO_VERSION, path, raw, stream, False, include_usage)
            if backend.llama_cpp and stream and include_usage and path != EMBEDDINGS_PATH:
                call.usage = UsageFiller(body, model, chat=path == CHAT_PATH)
            return call
        assert prepared is not None  # chosen in _handle whenever there are messages to inject into
        policy = self.policies.get(model)
        mode = policy.mode or prepared.artifact.layout
        if mode == "completion":
            out, chars = completion_body(body, messages, prepared, policy, scores)
            path, translate = COMPLETIONS_PATH, True
            if backend.vllm and (structured := vllm_completion_format(body)) is not None:
                out["response_format"] = structured  # vLLM's /v1/completions honours it
        else:
            chars = inject_chat(body, messages, prepared, policy, scores)
            out, translate = body, False
            _fix_response_format(backend, CHAT_PATH, body)
        self.metrics.injected_chars.observe(chars)
        payload = _encode(out)
        version = prepared.artifact.version
        call = _Call(request_id, id_is_uuid, model, version, path, payload, stream, translate, include_usage)
        if backend.llama_cpp and stream and include_usage:
            call.usage = UsageFiller(out, model, chat=True)
        return call

    def _upstream_headers(self, backend: Backend, client: dict[bytes, bytes], call: _Call) -> RawHeaders:
        headers: RawHeaders = [
            (b"host", backend.endpoint.host_header),
            _JSON,
            (b"content-length", str(len(call.payload)).encode()),
            (b"accept", b"text/event-stream" if call.stream else b"application/json"),
        ]
        # llama-cpp-python's server answers 400 to a request id that is not a UUID, so a
        # client's free-form id stays with us (ours are UUIDs and are forwarded).
        if call.request_id_is_uuid:
            headers.append((b"x-request-id", call.request_id))
        auth = client.get(b"authorization") if backend.forward_client_auth else backend.auth_header
        if auth is not None:
            headers.append((b"authorization", auth))
        return headers

    async def _forward(
        self,
        call: _Call,
        backend: Backend,
        client_headers: dict[bytes, bytes],
        send: Send,
        started: float,
        watcher: DisconnectWatcher,
    ) -> None:
        url = backend.endpoint.url(call.path)
        sent = perf_counter()
        headers = self._upstream_headers(backend, client_headers, call)
        response = await self.upstream.send(b"POST", url, headers, call.payload)
        try:
            passed = [(k, v) for k, v in response.headers if k.lower() in _PASSED_BACK]
            if response.status >= 400:
                body = await read_all(response)
                raise upstream_error(response.status, body, {k.decode(): v.decode() for k, v in passed})
            content_type = header_value(response.headers, b"content-type") or b"application/json"
            if call.stream and content_type.startswith(b"text/event-stream"):
                await self._relay_stream(call, response, send, started, sent, passed, watcher)
                return
            body = await read_all(response)
            received = perf_counter()
            if call.translate:
                body = self._translated(body, call.model)
                content_type = b"application/json"
            else:
                _check_json_object(body)
            watcher.stop()
            overhead = (sent - started) + (perf_counter() - received)
            headers = self._response_headers(call, overhead, passed)
            headers.append((b"content-type", content_type))
            await send_bytes(send, response.status, body, headers)
            self._done(call.model, call.version, response.status, started, overhead)
        finally:
            await close_quietly(response)

    @staticmethod
    def _translated(body: bytes, model: str) -> bytes:
        chat = completion_to_chat(_check_json_object(body), model)
        try:
            return orjson.dumps(chat)
        except orjson.JSONEncodeError:  # a usage object nested deeper than orjson writes
            raise BadBackendResponse("the backend's completion cannot be re-encoded as JSON") from None

    @staticmethod
    def _response_headers(call: _Call, overhead: float, passed: RawHeaders) -> RawHeaders:
        return [
            (b"x-request-id", call.request_id),
            (b"x-drpo-prompt-version", call.version.encode()),
            (b"x-drpo-overhead-ms", f"{overhead * 1000:.3f}".encode()),
            *passed,
        ]

    async def _relay_stream(
        self,
        call: _Call,
        response: Exchange,
        send: Send,
        started: float,
        sent: float,
        passed: RawHeaders,
        watcher: DisconnectWatcher,
    ) -> None:
        splitter = EventSplitter()
        translator = CompletionStreamTranslator(call.model, call.include_usage) if call.translate else None
        filler = call.usage
        # Our headers go out together with the first event (one wake-up of the client, not
        # two), and a backend that fails before its first event still gets a proper status.
        overhead = sent - started
        opened = False
        first_data = True
        done = False  # the backend's data: [DONE] went out
        last = b""  # the last block sent: was the backend's own last word an error event?
        try:
            async for chunk in iter_raw(response):
                arrived = perf_counter()
                block = splitter.feed(chunk)
                broken = None
                if block and (filler is not None or translator is not None):
                    block, broken = _read_events(block, translator, filler)
                if block:
                    if not done:
                        done = has_done(block)
                    last = block
                    if not opened:
                        opened = True
                        overhead += perf_counter() - arrived
                        await self._open_stream(send, call, response.status, overhead, passed)
                    if first_data and b"data:" in block:
                        first_data = False
                        self.metrics.first_token(call.model, call.version, perf_counter() - started)
                    await send({"type": "http.response.body", "body": block, "more_body": True})
                if broken is not None:
                    raise broken
            if not done:
                tail = self._unfinished_tail(splitter.pending, last, translator, filler)
                if not opened:
                    opened = True
                    await self._open_stream(send, call, response.status, overhead, passed)
                if tail:
                    await send({"type": "http.response.body", "body": tail, "more_body": True})
        except BackendError as exc:
            if not opened:
                raise  # nothing sent yet: an ordinary error response with its own status
            # Headers are gone already: report the failure in-band, as OpenAI does.
            kind = "disconnect" if exc.kind == "connect" else error_kind(exc)
            self.metrics.backend_error(call.model, call.version, kind)
            logger.warning("backend stream for %s failed: %s", call.model, exc.message)
            await _send_error_event(send, exc)
        except Exception:
            if not opened:
                raise  # answered as a 500 by _handle
            logger.exception("unexpected error while relaying a stream for %s", call.model)
            await _send_error_event(send, ProxyError("internal error in the proxy while relaying the stream"))
        finally:
            await close_quietly(response)
        watcher.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._done(call.model, call.version, response.status, started, overhead)

    @staticmethod
    def _unfinished_tail(
        pending: bytes,
        last: bytes,
        translator: CompletionStreamTranslator | None,
        filler: UsageFiller | None,
    ) -> bytes:
        """What ends a stream whose backend stopped without ``data: [DONE]``.

        An incomplete last event is never forwarded as an event (the SSE spec discards it),
        except a bare ``data: [DONE]`` missing only its blank line: that is the end marker.
        A stream whose last event was the backend's own error event just ends; any other
        raises :class:`BadBackendResponse`, which becomes the final error event.
        """
        if pending.strip() and has_done(pending):
            block = DONE
            if translator is not None:
                block = translator.translate(block)
            return filler.insert(block) if filler is not None else block
        if not pending.strip() and ends_with_error_event(last):
            return b""
        # A usage chunk from the filler would only precede the error: a broken stream gets none.
        what = "in the middle of an event" if pending.strip() else "without data: [DONE]"
        raise BadBackendResponse(f"the backend's stream ended {what}")

    async def _open_stream(self, send: Send, call: _Call, status: int, overhead: float, passed: RawHeaders) -> None:
        headers = self._response_headers(call, overhead, passed)
        headers.extend(_SSE_HEADERS)
        await send({"type": "http.response.start", "status": status, "headers": headers})

    # -- errors and bookkeeping ---------------------------------------------------

    async def _send_error(self, send: Send, exc: ProxyError, request_id: bytes, version: str) -> None:
        headers: RawHeaders = [
            (b"x-request-id", request_id),
            (b"x-drpo-prompt-version", version.encode()),
            _JSON,
        ]
        headers.extend((k.encode(), v.encode()) for k, v in exc.headers.items())
        if exc.status_code in (429, 503) and "retry-after" not in exc.headers:
            headers.append((b"retry-after", b"1"))
        with contextlib.suppress(OSError):  # the client is gone; nothing to tell it
            await send_bytes(send, exc.status_code, error_body(exc), headers)

    def _done(self, model: str, version: str, status: int, started: float, overhead: float) -> None:
        self.metrics.request_done(model, version, status, perf_counter() - started, overhead)


# A client's x-request-id is echoed in our response and logs: only short, visible ASCII ids are
# kept (128 fits any UUID, ULID or trace id in use); anything else is replaced by one of ours.
MAX_REQUEST_ID_LENGTH = 128
_VISIBLE_ASCII = re.compile(rb"[!-~]+")


def usable_request_id(value: bytes | None) -> bytes | None:
    """The client's request id if it may be echoed (1-128 visible ASCII characters), else None."""
    if value is None or len(value) > MAX_REQUEST_ID_LENGTH or _VISIBLE_ASCII.fullmatch(value) is None:
        return None
    return value


def _fix_response_format(backend: Backend, path: bytes, body: dict[str, Any]) -> bool:
    """Put a structured-output request in the backend's dialect, in place; whether it changed."""
    if "response_format" not in body:
        return False
    if backend.llama_cpp:
        return path == CHAT_PATH and rewrite_response_format(body)
    if backend.vllm:
        return path != EMBEDDINGS_PATH and rewrite_json_object_schema_format(body)
    return False


def _encode(body: Any) -> bytes:
    """A client's (edited) body as JSON; 400 for what orjson cannot write back (nesting past 254 levels)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"the request body cannot be re-encoded as JSON: {exc} (nested too deeply?)") from None


def _check_json_object(body: bytes) -> dict[str, Any]:
    """A backend's non-stream success body, which must be a JSON object (else 502, never relayed as a 200)."""
    try:
        return parse_event(body)
    except BadBackendResponse:
        raise BadBackendResponse("the backend's success response is not a JSON object") from None


def _read_events(
    block: bytes, translator: CompletionStreamTranslator | None, filler: UsageFiller | None
) -> tuple[bytes, MalformedEvent | None]:
    """A block through the usage count, translation and usage insertion (whichever apply).

    On a malformed event: what the events before it became, and the error to end the stream with.
    """
    broken = None
    if filler is not None:
        try:
            filler.observe(block)
        except MalformedEvent as exc:
            block, broken = exc.partial, exc
    if translator is not None and block:
        try:
            block = translator.translate(block)
        except MalformedEvent as exc:
            block, broken = exc.partial, exc
    if filler is not None and block:
        block = filler.insert(block)
    return block, broken


async def _send_error_event(send: Send, exc: ProxyError) -> None:
    """The in-band end of a stream whose headers are already out: one OpenAI-shaped error event."""
    await send({"type": "http.response.body", "body": sse_data({"error": exc.error_dict()}), "more_body": True})


__all__ = ["DONE", "OpenAIServing"]


def _header_text(value: bytes | None) -> str | None:
    """A header as text for hashing (an empty or undecodable one counts as absent)."""
    if not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None
