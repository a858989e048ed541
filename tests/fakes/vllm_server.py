"""A stand-in for ``vllm serve`` (no GPU here): the same command line, a minimal OpenAI API.

Started through ``tests/fakes/bin/vllm`` (put first on PATH by the tests) exactly as drpo
starts the real one: ``vllm serve MODEL --host H --port P --served-model-name NAME [extra]``.
It prints its command line (drpo keeps it in the backend log), and serves what drpo relies
on, in vLLM's shapes: ``/health``, ``/v1/models`` (``owned_by: "vllm"``, ``root``,
``max_model_len``), ``/v1/chat/completions`` and ``/v1/completions`` with streaming and the
``choices: []`` usage chunk for ``stream_options.include_usage``, structured outputs
(``response_format`` json_schema and ``structured_outputs.json``) and ``stop`` strings.

Automatic prefix caching is imitated: a prompt's leading whole blocks of tokens (words
here) already seen in an earlier prompt count as cached, reported as
``usage.prompt_tokens_details.cached_tokens`` when started with
``--enable-prompt-tokens-details`` (as vLLM does), unless ``--no-enable-prefix-caching``.

Like vLLM, it starts a separate "engine core" process (here one that only sleeps and
ignores its parent's death, as vLLM's EngineCore does after a SIGKILLed API server); its pid
is printed as ``fake vllm: engine core pid N``.

Test-only options: ``--fake-exit N`` exits at once with code N; ``--fake-load-seconds S``
waits before listening (loading weights). ``GET /fake/requests`` lists the bodies received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BLOCK = 4  # tokens per cache block (vLLM's default is 16; prompts here are short)
MAX_MODEL_LEN = 4096


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--fake-exit", type=int, default=None)
    serve.add_argument("--fake-load-seconds", type=float, default=0.2)
    return parser.parse_known_args(argv)


class FakeVLLM:
    def __init__(self, model: str, names: list[str], extra: list[str]) -> None:
        self.model = model
        self.names = names
        self.prefix_caching = "--no-enable-prefix-caching" not in extra
        self.token_details = "--enable-prompt-tokens-details" in extra
        self.seen: list[list[str]] = []
        self.requests: list[dict[str, Any]] = []

    # -- helpers ------------------------------------------------------------------------

    def cached_tokens(self, tokens: list[str]) -> int:
        best = 0
        for earlier in self.seen:
            same = 0
            for a, b in zip(earlier, tokens, strict=False):
                if a != b:
                    break
                same += 1
            best = max(best, same)
        if len(self.seen) < 64:
            self.seen.append(tokens)
        return (min(best, len(tokens) - 1) // BLOCK) * BLOCK if self.prefix_caching else 0

    def usage(self, prompt: str, completion_tokens: int) -> dict[str, Any]:
        tokens = prompt.split()
        usage: dict[str, Any] = {
            "prompt_tokens": len(tokens),
            "total_tokens": len(tokens) + completion_tokens,
            "completion_tokens": completion_tokens,
        }
        cached = self.cached_tokens(tokens)
        if self.token_details:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    def error(self, status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)

    # -- routes -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request) -> JSONResponse:
        now = int(time.time())
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": self.model,
                "parent": None,
                "max_model_len": MAX_MODEL_LEN,
                "permission": [],
            }
            for name in self.names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def fake_requests(self, request: Request) -> JSONResponse:
        return JSONResponse(self.requests)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Response:
        body = await request.json()
        self.requests.append(body)
        if body.get("model") not in self.names:
            return self.error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return self.error(400, "messages is required", "BadRequestError")
            prompt = "".join(f"<|{m.get('role')}|>\n{m.get('content')}\n" for m in messages) + "<|assistant|>\n"
            last_user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
            text = f"You said: {last_user}"
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return self.error(400, "prompt must be a string here", "BadRequestError")
            text = f"A plain answer. <END> and then {len(prompt)} characters of rambling"
        schema = _schema(body)
        if schema is not None:
            text = json.dumps(_value_for(schema))
        pieces = text.split(" ")
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
        text = " ".join(pieces)
        text, stopped = _apply_stop(text, body.get("stop"))
        if stopped:
            finish = "stop"
        pieces = [p for p in text.split(" ")]
        usage = self.usage(prompt, len(pieces))
        name = body["model"]
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{time.time_ns():x}"
        if body.get("stream") is True:
            options = body.get("stream_options") or {}
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            return StreamingResponse(
                _stream(ident, name, chat, pieces, finish, usage if with_usage else None),
                media_type="text/event-stream",
            )
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": name,
                "choices": [choice],
                "usage": usage,
            }
        )


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    structured = body.get("structured_outputs")
    if isinstance(structured, dict) and isinstance(structured.get("json"), dict):
        return dict(structured["json"])
    return None


def _value_for(schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {key: _value_for(sub) for key, sub in (schema.get("properties") or {}).items()}
    return {"string": "fake", "integer": 0, "number": 0.5, "boolean": True, "array": []}.get(str(kind))


def _apply_stop(text: str, stop: Any) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


async def _stream(
    ident: str, model: str, chat: bool, pieces: list[str], finish: str, usage: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            **(extra or {}),
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def choice(piece: str, reason: str | None) -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": reason}
        return {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason, "stop_reason": None}

    if chat:
        role = {"role": "assistant", "content": ""}
        yield event([{"index": 0, "delta": role, "logprobs": None, "finish_reason": None}])
    for i, piece in enumerate(pieces):
        yield event([choice(piece if i == 0 else " " + piece, None)])
        await asyncio.sleep(0)
    yield event([choice("", finish)])
    if usage is not None:
        yield event([], {"usage": usage})
    yield b"data: [DONE]\n\n"


def main(argv: list[str]) -> int:
    args, extra = parse(argv)
    print(f"fake vllm: argv={json.dumps(argv)}", flush=True)
    if args.fake_exit is not None:
        print("fake vllm: failing on purpose", flush=True)
        return int(args.fake_exit)
    engine_core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(f"fake vllm: engine core pid {engine_core.pid}", flush=True)
    time.sleep(args.fake_load_seconds)  # "loading weights": the port is not open yet
    fake = FakeVLLM(args.model, args.served_model_name or [args.model], extra)
    app = Starlette(
        routes=[
            Route("/health", fake.health),
            Route("/v1/models", fake.models),
            Route("/v1/chat/completions", fake.chat, methods=["POST"]),
            Route("/v1/completions", fake.completions, methods=["POST"]),
            Route("/fake/requests", fake.fake_requests),
        ]
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        engine_core.terminate()
        engine_core.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
