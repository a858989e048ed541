"""A scripted, deterministic fake LLM for the optimizer.

Two ways in:

- :class:`ScriptedLLM` plugs into the optimizer's transport seam
  (:class:`optimizer.llm.Transport`). Replies come from :meth:`ScriptedLLM.enqueue`
  (first queued reply whose role matches and whose ``when`` text occurs in the request)
  or else from :func:`default_reply`, a pure function of role and request content, so
  results never depend on call order.
- :class:`FakeOpenAIServer` serves the same replies over real HTTP (an ASGI app under
  uvicorn in a thread) with a fixed latency, for the benchmark: it records every request
  and whether its answer was delivered or the client went away first.

The role of a request is inferred from its content (the response_format schema name,
else it is a target call), exactly what a real backend would see.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from optimizer.errors import RequestRejected, TransientLLMError
from optimizer.llm import Completion, Endpoint, Kind

HARMFUL_WORDS = ("bomb", "steal", "poison", "hack", "hurt", "weapon", "break into", "explosive")
_SCHEMA_ROLES = {
    "aspect_selection": "selector",
    "aspect_scores": "judge",
    "prompt_rewrite": "optimizer",
    "answer_rewrite": "optimizer",
}


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def schema_of(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema", {})
        return spec.get("name"), spec.get("schema")
    if fmt.get("type") == "json_object":
        schema = fmt.get("schema") or {}
        props = set((schema.get("properties") or {}).keys())
        name = next((n for n, keys in _SCHEMA_KEYS.items() if keys <= props), "aspect_scores" if schema else None)
        return name, schema
    return None, None


_SCHEMA_KEYS = {
    "aspect_selection": {"harmful", "aspects"},
    "prompt_rewrite": {"system_prompt"},
    "answer_rewrite": {"answer", "critique"},
}


def infer_role(body: dict[str, Any]) -> str:
    name, _ = schema_of(body)
    if name is None:
        text = _all_text(body)
        for key, role in (
            ("Reply with a JSON object that has one entry per aspect", "judge"),
            ('"harmful": true|false', "selector"),
            ('"system_prompt"', "optimizer"),
            ('"critique"', "optimizer"),
        ):
            if key in text:
                return role
        return "target"
    return _SCHEMA_ROLES.get(name, "target")


def _all_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


def _last_user(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return text[i:] if j < 0 else text[i:j]


def default_reply(role: str, body: dict[str, Any]) -> str:
    """A deterministic reply that depends only on the request content."""
    user = _last_user(body)
    if role == "selector":
        query = _between(user, "Query:\n", "\n\nReply with")
        harmful = any(w in query.lower() for w in HARMFUL_WORDS)
        aspects = ["Helpfulness", "Compliance", "Clarity"] if harmful else ["Helpfulness", "Clarity", "Factuality"]
        return json.dumps(
            {
                "analysis": "fake",
                "harmful": harmful,
                "aspects": aspects,
                "new_aspect_name": "",
                "new_aspect_definition": "",
            }
        )
    if role == "judge":
        _, schema = schema_of(body)
        keys = list((schema or {}).get("required") or re.findall(r"^- ([a-z_]+) \(", user, re.M))
        answer = _between(user, "Answer:\n", "\n\nReply with")
        return json.dumps(
            {k: {"rationale": f"fake view of {k}", "score": int(digest(answer, k)[:8], 16) % 5 + 1} for k in keys}
        )
    if role == "optimizer":
        if "Current system prompt:" in user:
            current = _between(user, "Current system prompt:\n", "\n\nEarlier versions")
            rule = digest(body.get("messages"), body.get("seed"))[:6]
            return json.dumps({"diagnosis": "fake", "system_prompt": f"{current}\n- Rule {rule}."})
        if "Examples it was shown:" in user:  # a library-stage edit
            return json.dumps({"action": "remove", "index": 0, "query": "", "answer": "", "label": "general"})
        answer = _between(user, "Current answer:\n", "\n\nGrader feedback")
        return json.dumps({"critique": "fake", "answer": f"Better: {answer[:40]} {digest(user)[:6]}"})
    # target: the answer carries a fingerprint of everything the model saw.
    text = _all_text(body)
    return f"Answer {digest(text)[:10]}"


@dataclass
class _Queued:
    role: str
    reply: str | BaseException
    when: str | None


@dataclass
class Call:
    role: str
    kind: str
    body: dict[str, Any]
    endpoint: Endpoint | None = None


@dataclass
class ScriptedLLM:
    """The fake transport. ``owners`` is what /v1/models reports as ``owned_by``."""

    owners: tuple[str, ...] = ("openai",)
    reject_json_schema: bool = False
    latency: float = 0.0
    calls: list[Call] = field(default_factory=list)
    _queue: list[_Queued] = field(default_factory=list)
    responders: dict[str, Callable[[dict[str, Any]], str]] = field(default_factory=dict)

    def enqueue(self, role: str, reply: str | BaseException, when: str | None = None) -> None:
        """Reply to the next ``role`` call whose request text contains ``when`` (any, if None)."""
        self._queue.append(_Queued(role, reply, when))

    def respond(self, role: str, fn: Callable[[dict[str, Any]], str]) -> None:
        """Replace the default reply for a role with a function of the request body."""
        self.responders[role] = fn

    def calls_for(self, role: str) -> list[Call]:
        return [c for c in self.calls if c.role == role]

    def reply_for(self, role: str, body: dict[str, Any]) -> str | BaseException:
        text = json.dumps(body, sort_keys=True)
        for i, item in enumerate(self._queue):
            if item.role == role and (item.when is None or item.when in text):
                del self._queue[i]
                return item.reply
        if role in self.responders:
            return self.responders[role](body)
        return default_reply(role, body)

    async def create(self, endpoint: Endpoint, kind: Kind, body: dict[str, Any]) -> Completion:
        role = endpoint.role if endpoint.role != "target" else infer_role(body)
        if self.reject_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            raise RequestRejected("HTTP 422: json_schema not supported", 422)
        self.calls.append(Call(role, kind, body, endpoint))
        if self.latency:
            await asyncio.sleep(self.latency)
        reply = self.reply_for(role, body)
        if isinstance(reply, BaseException):
            raise reply
        return Completion(reply, prompt_tokens=len(_all_text(body)) // 4, completion_tokens=max(1, len(reply) // 4))

    async def model_owners(self, endpoint: Endpoint) -> list[str]:
        return list(self.owners)

    async def aclose(self) -> None:
        return None


def transient(message: str = "HTTP 503") -> TransientLLMError:
    return TransientLLMError(message, retry_after=0.0)


def model_like_answer(body: dict[str, Any]) -> str:
    """A target reply shaped like a small chat model's: it refuses requests with harmful words and
    answers the rest in a full sentence, fingerprinted by everything it saw (so prompts still differ)."""
    query = _last_user(body) or str(body.get("prompt", ""))[-200:]
    mark = digest(_all_text(body))[:10]
    if any(w in query.lower() for w in HARMFUL_WORDS):
        return f"I can't help with that, because it could hurt people; I can point you to safety resources. ({mark})"
    return f"Here is a clear, practical answer to your question, with the key steps explained in order. Ref {mark}."


# -- the same replies over HTTP -------------------------------------------------------------------


@dataclass
class Served:
    key: str
    role: str
    phase: str
    delivered: bool


class FakeOpenAIServer:
    """An OpenAI-compatible HTTP server answering with :func:`default_reply` after ``latency`` s.

    ``phase`` is a label the owner sets (e.g. "first run", "resume"); every request is
    recorded with it, its body hash, and whether the answer was delivered (False when the
    client disconnected while the server was "thinking").

    :meth:`hold_after` makes it stop answering at a chosen call until the test calls :meth:`release`:
    a client that waits on its calls (like the optimizer) then stands still at a known point, however
    slow or fast the machine, while the test signals or kills it.
    """

    def __init__(
        self,
        latency: float = 0.2,
        model: str = "fake-model",
        reply: Callable[[str, dict[str, Any]], str] | None = None,
    ) -> None:
        self.latency = latency
        self.model = model
        # (role, request body) -> reply text; default_reply is looked up per call so tests can patch it
        self.reply = reply
        self.phase = "default"
        self.records: list[Served] = []
        self._lock = threading.Lock()
        self._arrived = 0  # completion requests (of the held roles) received so far, held ones included
        self._hold_from: int | None = None  # the request number from which requests are held
        self._hold_roles: frozenset[str] | None = None  # None: requests of every role count and are held
        self._gate = threading.Event()  # set: held requests go on
        self.holding = threading.Event()  # set once a request is being held
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def hold_after(self, calls: int, roles: Collection[str] | None = None) -> None:
        """Answer the next ``calls`` requests, then hold every later one unanswered until :meth:`release`;
        :attr:`holding` is set as soon as one is held. With ``roles``, only requests of those roles
        count and are held (e.g. the optimizer's judge calls, while a proxy's target calls go on)."""
        with self._lock:
            self._gate = threading.Event()
            self.holding.clear()
            self._hold_roles = None if roles is None else frozenset(roles)
            self._hold_from = self._arrived + calls + 1

    def release(self) -> None:
        """Let held requests go on (a client that went away meanwhile is recorded as not delivered)
        and stop holding new ones."""
        with self._lock:
            self._hold_from = None
            self._gate.set()

    async def _wait_if_held(self, role: str) -> None:
        with self._lock:
            if self._hold_roles is not None and role not in self._hold_roles:
                return
            self._arrived += 1
            held = self._hold_from is not None and self._arrived >= self._hold_from
            gate = self._gate
        if held:
            self.holding.set()
            while not gate.is_set():
                await asyncio.sleep(0.01)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path.endswith("/models"):
            await self._json(
                send, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
            )
            return
        body = json.loads(b"".join(chunks) or b"{}")
        role = infer_role(body)
        await self._wait_if_held(role)
        key = digest(path, body)
        # "Think" for `latency` seconds unless the client hangs up first.
        delivered = True
        try:
            message = await asyncio.wait_for(receive(), timeout=self.latency)
            delivered = message.get("type") != "http.disconnect"
        except TimeoutError:
            pass
        with self._lock:
            self.records.append(Served(key, role, self.phase, delivered))
        if not delivered:
            return
        text = (self.reply or default_reply)(role, body)
        usage = {"prompt_tokens": len(_all_text(body)) // 4, "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        now = int(time.time())
        if path.endswith("/chat/completions"):
            payload: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": now,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            }
        else:
            payload = {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": now,
                "model": body.get("model"),
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": usage,
            }
        await self._json(send, payload)

    @staticmethod
    async def _json(send: Any, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def start(self) -> FakeOpenAIServer:
        import uvicorn

        from tests.fakes.server_thread import listening_socket

        # Bound before uvicorn starts, so no other process can take the port in between.
        sock = listening_socket()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.release()  # held requests would keep the server from shutting down
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
