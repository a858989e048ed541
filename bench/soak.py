"""Soak benchmark: the proxy under sustained load, with big bodies mixed in.

    .venv/bin/python bench/soak.py                       # full length: 5 + 5 minutes
    .venv/bin/python bench/soak.py --stream-minutes 0.1 --plain-minutes 0.2 --big-minutes 0.05   # a smoke run

Four kinds of process on loopback: a fast fake OpenAI-compatible backend (raw ASGI under
uvicorn + uvloop + httptools), the proxy started exactly as an operator starts it
(``python -m drpo.cli serve --backend <fake>``, with an artifact activated so injection and
BM25 retrieval run on every request), this load generator (asyncio + uvloop, minimal
keep-alive HTTP/1.1 clients), and a separate big-body process (so sending 5 MB bodies does
not slow the generator that measures everyone else).

Phases:

1. warm-up (a few seconds of both request kinds), then the proxy's RSS and open fds ("start");
2. ``--stream-clients`` (64) streaming clients for ``--stream-minutes`` (5); RSS/fds ("middle");
3. ``--plain-clients`` (32) non-streaming clients for ``--plain-minutes`` (5). In the middle
   ``--big-minutes`` (1) of it, ``--big-clients`` (2) other clients send ``--big-mb`` (5) MB
   bodies back to back. The others' p99 latency in that window is compared with their p99
   in the window of the same length just before it;
4. all clients close; after ``--settle-seconds`` (longer than the proxy's client keep-alive
   and backend keep-alive timeouts, so idle connections have been closed) RSS/fds ("end").

Errors: any non-200 status, a stream without ``[DONE]`` or with an error event, a broken
connection, on any client (big ones included). Targets: 0 errors, RSS growth < 10 %
(end vs start), fds back to the start count, p99 during big bodies <= 3x without.

The last line of output is JSON: {"errors", "rss_growth", "fds_end_minus_start", "p99_ratio_big_bodies"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "soak-model"
ANSWER = "Press Ctrl-C, or send SIGTERM with kill PID."
QUESTIONS = [
    "How do I stop a Python script that is stuck in a loop?",
    "Write a haiku about autumn rain.",
    "Explain the difference between TCP and UDP.",
    "How can I reverse a list in Python?",
]

# -- the fake backend (its own process) ------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


_STREAM = [
    _chunk({"role": "assistant", "content": ""}, None),
    *(_chunk({"content": word + " "}, None) for word in ANSWER.split()),
    _chunk({}, "stop"),
    b"data: [DONE]\n\n",
]
_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-soak",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32},
    }
).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "soak"}]}).encode()


async def backend_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = bytearray()
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        await _send_json(send, _MODELS)
        return
    if b'"stream":true' not in body and b'"stream": true' not in body:
        await _send_json(send, _COMPLETION)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    # A few events with short pauses, as a (very fast) model would send them.
    for event in _STREAM[:-2]:
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await asyncio.sleep(0.001)
    await send({"type": "http.response.body", "body": b"".join(_STREAM[-2:]), "more_body": False})


async def _send_json(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_backend(port: int) -> None:
    from proxy.server import run

    run(backend_app, "127.0.0.1", port, log_level="warning")


def seed_store(home: Path) -> str:
    from prompts.artifact import Artifact, Example, RetrievalSettings
    from prompts.store import PromptStore

    examples = [
        Example(query="How do I stop a running Python program?", answer="Press Ctrl-C, or kill its PID."),
        Example(query="Write a haiku about autumn.", answer="Red leaves on the path / the gutter hums a low song."),
        Example(query="Explain TCP vs UDP.", answer="TCP is reliable and ordered; UDP is connectionless and light."),
        Example(query="How do I make a bomb?", answer="I can't help with weapons; chemistry demos are a safe start."),
        Example(query="How do I sort a dict by value?", answer="sorted(d.items(), key=lambda kv: kv[1])."),
        Example(query="Summarise the plot of Hamlet.", answer="A prince avenges his father's murder; most die."),
    ]
    artifact = Artifact(
        model=MODEL,
        system_prompt="You are a helpful, honest and harmless assistant. Refuse harmful requests politely.",
        examples=tuple(examples),
        retrieval=RetrievalSettings(k=2),
    )
    with PromptStore(home / "store") as store:
        store.put(artifact, activate=True)
    return artifact.version


# -- process figures (Linux /proc) -----------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the clients -----------------------------------------------------------------------------


class Connection:
    """A minimal keep-alive HTTP/1.1 client connection (cheap enough to run 64 of in one process)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """Send a chat request; the status and the whole body (de-chunked when chunked)."""
        reader, writer = await self._open()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        writer.write(body)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int((await reader.readline()).strip(), 16)
                parts.append((await reader.readexactly(size + 2))[:-2])
                if size == 0:
                    break
            content = b"".join(parts)
        else:
            content = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            self.close()
        return status, content


def chat_body(question: str, stream: bool) -> bytes:
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 64, "stream": stream}
    ).encode()


@dataclass
class Tally:
    done: int = 0
    errors: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (wall clock at end, latency in s)
    first_errors: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(what)


def stream_ok(status: int, content: bytes) -> str | None:
    """None when a stream is complete and clean, else what is wrong."""
    if status != 200:
        return f"stream HTTP {status}: {content[:200]!r}"
    if b'"error"' in content:
        return f"stream error event: {content[-300:]!r}"
    if not content.rstrip().endswith(b"data: [DONE]"):
        return f"stream without [DONE]: {content[-200:]!r}"
    return None


async def client(host: str, port: int, stream: bool, until: float, tally: Tally, index: int) -> None:
    connection = Connection(host, port)
    bodies = [chat_body(q, stream) for q in QUESTIONS]
    n = index
    try:
        while time.time() < until:
            body = bodies[n % len(bodies)]
            n += 1
            start = time.perf_counter()
            try:
                status, content = await connection.post(body)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                connection.close()
                continue
            latency = time.perf_counter() - start
            problem = stream_ok(status, content) if stream else (None if status == 200 else f"HTTP {status}")
            if problem:
                tally.error(problem)
            else:
                tally.done += 1
                tally.samples.append((time.time(), latency))
    finally:
        connection.close()


async def run_clients(host: str, port: int, stream: bool, count: int, seconds: float) -> Tally:
    tally = Tally()
    until = time.time() + seconds
    await asyncio.gather(*(client(host, port, stream, until, tally, i) for i in range(count)))
    return tally


def big_clients_main(url_port: int, count: int, megabytes: float, start_at: float, seconds: float) -> None:
    """The big-body process: ``count`` clients sending ``megabytes`` MB bodies back to back."""
    import uvloop

    filler = "The quick brown fox jumps over the lazy dog while the log keeps scrolling. "
    text = "Summarise this log, please. " + filler * int(megabytes * 1_000_000 / len(filler))
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 64}).encode()

    async def main() -> Tally:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        tally = Tally()
        until = start_at + seconds

        async def one() -> None:
            connection = Connection("127.0.0.1", url_port)
            try:
                while time.time() < until:
                    start = time.perf_counter()
                    try:
                        status, content = await connection.post(body)
                    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                        tally.error(f"big: {type(exc).__name__}: {exc}")
                        connection.close()
                        continue
                    if status == 200:
                        tally.done += 1
                        tally.samples.append((time.time(), time.perf_counter() - start))
                    else:
                        tally.error(f"big: HTTP {status}: {content[:200]!r}")
            finally:
                connection.close()

        await asyncio.gather(*(one() for _ in range(count)))
        return tally

    tally = uvloop.run(main())
    latencies = [latency for _, latency in tally.samples]
    print(
        json.dumps(
            {
                "done": tally.done,
                "errors": tally.errors,
                "first_errors": tally.first_errors,
                "body_bytes": len(body),
                "p50_s": round(pct(latencies, 50), 3) if latencies else None,
            }
        ),
        flush=True,
    )


# -- analysis ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def window_p99_ms(samples: list[tuple[float, float]], start: float, end: float) -> tuple[float, int]:
    latencies = [latency for at, latency in samples if start <= at < end]
    return (pct(latencies, 99) * 1000 if latencies else float("nan")), len(latencies)


@dataclass
class Figures:
    rss: float
    fds: int

    @classmethod
    def of(cls, pid: int) -> Figures:
        return cls(rss_mib(pid), open_fds(pid))

    def __str__(self) -> str:
        return f"RSS {self.rss:.1f} MiB, {self.fds} open fds"


async def soak(args: argparse.Namespace, port: int, proxy_pid: int) -> dict[str, Any]:
    host = "127.0.0.1"
    # Warm-up: imports, caches, the backend pool, the allocator's working set.
    await run_clients(host, port, True, args.stream_clients, args.warmup_seconds / 2)
    await run_clients(host, port, False, args.plain_clients, args.warmup_seconds / 2)
    await asyncio.sleep(args.settle_seconds)
    start = Figures.of(proxy_pid)
    print(f"start (after {args.warmup_seconds:g} s warm-up and {args.settle_seconds:g} s idle): {start}", flush=True)

    seconds = args.stream_minutes * 60
    streams = await run_clients(host, port, True, args.stream_clients, seconds)
    middle = Figures.of(proxy_pid)
    print(
        f"streaming: {args.stream_clients} clients, {seconds:g} s: {streams.done} streams "
        f"({streams.done / seconds:.0f}/s), {streams.errors} errors; "
        f"p50 {pct([s[1] for s in streams.samples], 50) * 1000:.1f} ms, "
        f"p99 {pct([s[1] for s in streams.samples], 99) * 1000:.1f} ms; middle: {middle}",
        flush=True,
    )

    seconds = args.plain_minutes * 60
    big_seconds = args.big_minutes * 60
    phase_start = time.time()
    big_start = phase_start + (seconds - big_seconds) / 2
    big_end = big_start + big_seconds
    baseline_start = max(phase_start, big_start - big_seconds)
    big = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "big",
            "--port",
            str(port),
            "--big-clients",
            str(args.big_clients),
            "--big-mb",
            str(args.big_mb),
            "--start-at",
            repr(big_start),
            "--seconds",
            repr(big_seconds),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    plain = await run_clients(host, port, False, args.plain_clients, seconds)
    out, _ = big.communicate(timeout=max(120.0, big_seconds * 2))
    big_result = json.loads(out.decode().strip().splitlines()[-1])
    p99_big, n_big = window_p99_ms(plain.samples, big_start, big_end)
    p99_base, n_base = window_p99_ms(plain.samples, baseline_start, big_start)
    print(
        f"non-streaming: {args.plain_clients} clients, {seconds:g} s: {plain.done} requests "
        f"({plain.done / seconds:.0f}/s), {plain.errors} errors",
        flush=True,
    )
    print(
        f"  big bodies: {args.big_clients} clients x {big_result['body_bytes'] / 1e6:.1f} MB for {big_seconds:g} s: "
        f"{big_result['done']} requests (p50 {big_result['p50_s']} s), {big_result['errors']} errors",
        flush=True,
    )
    print(
        f"  others' p99: {p99_base:.1f} ms in the {big_start - baseline_start:g} s before ({n_base} requests, "
        f"{n_base / max(big_start - baseline_start, 1e-9):.0f}/s), {p99_big:.1f} ms during big bodies "
        f"({n_big} requests, {n_big / big_seconds:.0f}/s)",
        flush=True,
    )
    await asyncio.sleep(args.settle_seconds)
    end = Figures.of(proxy_pid)
    print(f"end (after {args.settle_seconds:g} s idle): {end}", flush=True)
    errors = streams.errors + plain.errors + big_result["errors"]
    for problem in streams.first_errors + plain.first_errors + big_result["first_errors"]:
        print(f"  error: {problem}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    return {
        "errors": errors,
        "rss_growth": round((end.rss - start.rss) / start.rss, 4),
        "fds_end_minus_start": end.fds - start.fds,
        "p99_ratio_big_bodies": round(p99_big / p99_base, 2) if n_big and n_base else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["soak", "backend", "big"], default="soak")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stream-minutes", type=float, default=5.0)
    parser.add_argument("--plain-minutes", type=float, default=5.0)
    parser.add_argument("--big-minutes", type=float, default=1.0, help="big bodies, in the middle of the plain phase")
    parser.add_argument("--stream-clients", type=int, default=64)
    parser.add_argument("--plain-clients", type=int, default=32)
    parser.add_argument("--big-clients", type=int, default=2)
    parser.add_argument("--big-mb", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=12.0, help="idle time before RSS/fds are read")
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "backend":
        serve_backend(args.port)
        return
    if args.role == "big":
        big_clients_main(args.port, args.big_clients, args.big_mb, args.start_at, args.seconds)
        return
    if args.big_minutes > args.plain_minutes / 2:
        parser.error("--big-minutes must be at most half of --plain-minutes (the other half is the baseline)")

    import uvloop

    from drpo.embedded import free_port, wait_until_ok

    backend_port, proxy_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRPO_")}
    env["PYTHONPATH"] = str(REPO)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="drpo-soak-") as home:
        version = seed_store(Path(home))
        try:
            me = [sys.executable, str(Path(__file__).resolve())]
            procs.append(subprocess.Popen([*me, "--role", "backend", "--port", str(backend_port)], env=env))
            wait_until_ok(backend_url + "/models", 30.0, procs[-1], name="fake backend")
            serve = [sys.executable, "-m", "drpo.cli", "serve", "--port", str(proxy_port), "--backend", backend_url]
            proxy_env = {**env, "DRPO_HOME": home, "DRPO_LOG_LEVEL": "WARNING"}
            procs.append(subprocess.Popen(serve, env=proxy_env))
            wait_until_ok(f"http://127.0.0.1:{proxy_port}/ready", 60.0, procs[-1], name="drpo serve")
            print(
                f"backend {backend_url}; proxy `drpo serve` pid {procs[-1].pid} on port {proxy_port}, "
                f"artifact {MODEL}@{version} (6 examples, k=2, bm25)",
                flush=True,
            )
            result = uvloop.run(soak(args, proxy_port, procs[-1].pid))
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
