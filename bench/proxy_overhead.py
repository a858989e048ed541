"""Proxy overhead benchmark: direct-to-backend vs through the proxy, in one run.

    .venv/bin/python bench/proxy_overhead.py [--requests 2000] [--throughput-requests 4000]

Three processes on loopback, so none shares a GIL with another: a minimal fast fake
backend (raw ASGI on uvicorn + uvloop + httptools, canned answers), the proxy (the real
app from ``proxy.app.create_app`` with injection and retrieval on: an artifact of 100 labelled
examples from the default library with its selection settings, one proxy per ``--retrieval``
method, measured interleaved), and this load generator (asyncio + uvloop, raw HTTP/1.1 and
httpx clients).

Measured:
- latency at concurrency 1, non-stream: direct and proxied requests *interleaved* one by
  one (so drift in machine load hits both alike); overhead at a percentile = proxied
  latency percentile − direct latency percentile. Paired differences and the proxy's own
  ``x-drpo-overhead-ms`` are printed too, for reference;
- throughput at concurrency 16, non-stream: a fixed number of requests per side, direct
  and proxied alternated twice; requests/second averaged;
- stream time to first byte at concurrency 1: time until the first ``data:`` chunk of an
  SSE stream arrives, interleaved like the latency test; overhead = p50 difference.

``measure`` takes several proxies and measures them interleaved with direct in one run (the
box is shared: only same-run ratios compare); that is how the httpcore-based forward path and
aiohttp's were compared (``--transport both`` at commit 7ba747f, figures in BENCHMARKS.md).

The last line of output is the JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "bench-model"
CLIENT_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "How do I stop a Python script that is stuck in a loop?"}],
    "max_tokens": 64,
    "temperature": 0,
}

# -- the fake backend (its own process) -----------------------------------------------

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Press Ctrl-C, or send SIGTERM with kill PID."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32},
    }
).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode()


def _chunk(delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


_STREAM = [
    _chunk({"role": "assistant", "content": ""}, None),
    _chunk({"content": "Press Ctrl-C."}, None),
    _chunk({}, "stop"),
    b"data: [DONE]\n\n",
]


async def backend_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        await _send(send, _MODELS)
    elif b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        # The first chunk goes out at once; the rest after a pause, as a model would.
        await send({"type": "http.response.body", "body": _STREAM[0], "more_body": True})
        await asyncio.sleep(0.002)
        await send({"type": "http.response.body", "body": b"".join(_STREAM[1:]), "more_body": False})
    else:
        await _send(send, _COMPLETION)


async def _send(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_backend(port: int) -> None:
    from proxy.server import run

    run(backend_app, "127.0.0.1", port, log_level="warning")


TARGETS = {"p50_overhead_ms": 1.0, "p99_overhead_ms": 3.0, "stream_ttfb_overhead_ms": 1.0}


def serve_proxy(port: int, backend_url: str, home: str, profile: str = "") -> None:
    from prompts.config import Settings
    from proxy.app import create_app
    from proxy.server import run

    settings = Settings(home=Path(home), backend_url=backend_url, api_keys=[], store_poll_interval=5.0)
    app = create_app(settings)
    if not profile:
        run(app, "127.0.0.1", port, log_level="warning")
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(run, app, "127.0.0.1", port, "warning")
    profiler.dump_stats(profile)


def seed_store(home: Path, method: str = "bm25", library_size: int = 100) -> str:
    """Store and activate the benchmark artifact: ``library_size`` labelled examples of the
    default library (spread over all of it), its selection settings, the given retrieval method."""
    from prompts.defaults import default_artifact
    from prompts.store import PromptStore

    default = default_artifact()
    examples = default.examples
    step = max(1, len(examples) // library_size)
    chosen = examples[::step][:library_size]
    artifact = default.with_changes(
        model=MODEL,
        examples=chosen,
        retrieval=default.retrieval.model_copy(update={"method": method}),
    )
    with PromptStore(home / "store") as store:
        store.put(artifact, activate=True)
    return artifact.version


# -- the load generator --------------------------------------------------------------


class Connection:
    """A minimal HTTP/1.1 keep-alive client connection (the load generator's own cost stays small
    and identical for both sides; a full client library would blur the difference we measure)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path.rstrip("/") + "/chat/completions").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    def _request(self, body: bytes) -> bytes:
        head = (
            b"POST "
            + self.path
            + b" HTTP/1.1\r\nhost: "
            + f"{self.host}:{self.port}".encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        return head + body

    async def _head(self, reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
        return status, headers

    async def post(self, body: bytes) -> tuple[float, bytes | None]:
        """Full non-stream request; seconds and the proxy's overhead header (if any)."""
        reader, writer = await self._ensure()
        start = time.perf_counter()
        writer.write(self._request(body))
        try:
            status, headers = await self._head(reader)
        except asyncio.IncompleteReadError:
            # The server closed a keep-alive connection that sat idle past its timeout (a slow
            # method's throughput round can outlast it): reconnect once, time the retry only.
            self.reader = self.writer = None
            reader, writer = await self._ensure()
            start = time.perf_counter()
            writer.write(self._request(body))
            status, headers = await self._head(reader)
        content = await reader.readexactly(int(headers[b"content-length"]))
        elapsed = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
        return elapsed, headers.get(b"x-drpo-overhead-ms")

    async def ttfb(self, body: bytes) -> float:
        """Seconds until the first chunk carrying a data event; the stream is then drained."""
        reader, writer = await self._ensure()
        start = time.perf_counter()
        writer.write(self._request(body))
        status, headers = await self._head(reader)
        if status != 200 or headers.get(b"transfer-encoding") != b"chunked":
            raise RuntimeError(f"stream failed: HTTP {status}")
        first = None
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if first is None and b"data:" in chunk:
                first = time.perf_counter() - start
            if size == 0:
                break
        if first is None:
            raise RuntimeError("stream carried no data event")
        return first

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def throughput_httpx(base: str, body: bytes, total: int, concurrency: int) -> float:
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        headers = {"content-type": "application/json"}

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post("/chat/completions", content=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))  # connections and warm-up
        remaining = total
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell CPU cost from waiting."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def interleaved(count: int, calls: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, list[float]]:
    """Each side once per round, the order rotated every round so none always follows another."""
    sides = list(calls)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for i in range(count):
        shift = i % len(sides)
        for side in sides[shift:] + sides[:shift]:
            times[side].append(await calls[side]())
    return times


async def throughput(base: str, body: bytes, total: int, concurrency: int) -> float:
    remaining = total
    connections = [Connection(base) for _ in range(concurrency)]
    for connection in connections:
        await connection._ensure()

    async def worker(connection: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await connection.post(body)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return total / elapsed


async def measure(
    direct: str,
    proxies: dict[str, str],
    n: int,
    n_throughput: int,
    n_stream: int,
    backend_pid: int,
    proxy_pids: dict[str, int],
    rounds: int = 2,
) -> dict[str, dict[str, float]]:
    """Direct and every proxy measured side by side."""
    body = json.dumps(CLIENT_BODY).encode()
    stream_body = json.dumps({**CLIENT_BODY, "stream": True}).encode()
    connections = {"direct": Connection(direct)} | {name: Connection(url) for name, url in proxies.items()}
    own: dict[str, list[float]] = {name: [] for name in proxies}

    def post_call(side: str) -> Callable[[], Awaitable[float]]:
        async def call() -> float:
            elapsed, overhead = await connections[side].post(body)
            if overhead is not None and side in own:
                own[side].append(float(overhead))
            return elapsed

        return call

    sides = list(connections)
    # Warm-up: connections, caches, the proxy's model discovery.
    await interleaved(300, {side: post_call(side) for side in sides})
    for url in proxies.values():
        await throughput(url, body, 500, 16)
    for values in own.values():
        values.clear()

    times = await interleaved(n, {side: post_call(side) for side in sides})
    ms = {side: [x * 1000 for x in values] for side, values in times.items()}
    d_ms = ms["direct"]
    results: dict[str, dict[str, float]] = {name: {} for name in proxies}
    print(f"latency, concurrency 1, non-stream, {n} interleaved rounds ({', '.join(sides)}):")
    print(f"  direct              p50 {pct(d_ms, 50):.3f} ms  p99 {pct(d_ms, 99):.3f} ms")
    for name in proxies:
        p_ms = ms[name]
        paired = [b - a for a, b in zip(d_ms, p_ms, strict=True)]
        p50 = pct(p_ms, 50) - pct(d_ms, 50)
        p99 = pct(p_ms, 99) - pct(d_ms, 99)
        results[name] |= {"p50_overhead_ms": round(p50, 3), "p99_overhead_ms": round(p99, 3)}
        print(f"  proxied ({name:8})  p50 {pct(p_ms, 50):.3f} ms  p99 {pct(p_ms, 99):.3f} ms")
        print(f"    overhead (percentile difference): p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        print(f"    paired differences for reference: p50 {pct(paired, 50):.3f} ms, p99 {pct(paired, 99):.3f} ms")
        print(f"    proxy's own x-drpo-overhead-ms: p50 {pct(own[name], 50):.3f} ms, p99 {pct(own[name], 99):.3f} ms")

    # Throughput twice: with httpx.AsyncClient as the load generator (what the openai SDK
    # and most Python clients use; the way the reference figures were taken), and
    # with the lean raw client, which leaves the proxy's own CPU cost exposed.
    bases = {"direct": direct} | proxies
    for label, run in (("httpx.AsyncClient", throughput_httpx), ("raw HTTP/1.1 client", throughput)):
        rates: dict[str, list[float]] = {side: [] for side in bases}
        cpu = {name: {"backend": 0.0, "proxy": 0.0} for name in proxies}
        for round_ in range(rounds):
            # Every other round in reverse, so load drift over the run favours no side.
            order = list(bases.items()) if round_ % 2 == 0 else list(bases.items())[::-1]
            for side, base in order:
                if side == "direct":
                    rates[side].append(await run(base, body, n_throughput, 16))
                    continue
                before = cpu_seconds(backend_pid), cpu_seconds(proxy_pids[side])
                rates[side].append(await run(base, body, n_throughput, 16))
                cpu[side]["backend"] += cpu_seconds(backend_pid) - before[0]
                cpu[side]["proxy"] += cpu_seconds(proxy_pids[side]) - before[1]
        rps_direct = statistics.mean(rates["direct"])
        per = 1e6 / (rounds * n_throughput)
        print(
            f"throughput, concurrency 16, non-stream, load generator {label}, "
            f"{n_throughput} requests x {rounds} rounds:"
        )
        print(f"  direct {rps_direct:.0f} req/s (rounds: {', '.join(f'{r:.0f}' for r in rates['direct'])})")
        for name in proxies:
            rps_proxy = statistics.mean(rates[name])
            each = ", ".join(f"{r:.0f}" for r in rates[name])
            print(f"  proxied ({name}) {rps_proxy:.0f} req/s, ratio {rps_proxy / rps_direct:.2f} (rounds: {each})")
            print(
                f"    CPU per proxied request (from /proc): proxy {cpu[name]['proxy'] * per:.0f} us, "
                f"backend {cpu[name]['backend'] * per:.0f} us"
            )
            if label == "httpx.AsyncClient":
                results[name] |= {"rps_proxy": round(rps_proxy, 1), "rps_direct": round(rps_direct, 1)}
            else:
                results[name] |= {"raw_client_ratio": round(rps_proxy / rps_direct, 3)}
        print(f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    def ttfb_call(side: str) -> Callable[[], Awaitable[float]]:
        async def call() -> float:
            return await connections[side].ttfb(stream_body)

        return call

    # Fresh connections: the old ones idled past uvicorn's keep-alive timeout meanwhile.
    for connection in connections.values():
        connection.close()
    connections = {"direct": Connection(direct)} | {name: Connection(url) for name, url in proxies.items()}
    await interleaved(100, {side: ttfb_call(side) for side in sides})
    stream_times = await interleaved(n_stream, {side: ttfb_call(side) for side in sides})
    sd = pct(stream_times["direct"], 50) * 1000
    print(f"stream time to first data chunk, concurrency 1, {n_stream} interleaved rounds:")
    print(f"  direct p50 {sd:.3f} ms")
    for name in proxies:
        sp = pct(stream_times[name], 50) * 1000
        results[name]["stream_ttfb_overhead_ms"] = round(sp - sd, 3)
        print(f"  proxied ({name}) p50 {sp:.3f} ms, overhead {sp - sd:.3f} ms")
    for connection in connections.values():
        connection.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["bench", "backend", "proxy"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend-url", default="")
    parser.add_argument("--home", default="")
    parser.add_argument("--requests", type=int, default=2000, help="interleaved rounds for the latency test")
    parser.add_argument("--throughput-requests", type=int, default=4000, help="requests per throughput round")
    parser.add_argument("--throughput-rounds", type=int, default=2, help="rounds per side, order reversed each round")
    parser.add_argument("--stream-requests", type=int, default=500, help="interleaved rounds for the TTFB test")
    parser.add_argument("--profile", default="", help="profile the proxy process with cProfile into this file")
    parser.add_argument(
        "--retrieval",
        default="bm25",
        help="comma-separated methods (bm25,embedding,hybrid,minilm), one proxy each",
    )
    parser.add_argument("--library-size", type=int, default=100, help="examples in the benchmark artifact")
    args = parser.parse_args()
    if args.role == "backend":
        serve_backend(args.port)
        return
    if args.role == "proxy":
        serve_proxy(args.port, args.backend_url, args.home, args.profile)
        return

    import uvloop

    from drpo.embedded import free_port, wait_until_ok

    methods = [m.strip() for m in args.retrieval.split(",") if m.strip()]
    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}/v1"
    proxy_urls: dict[str, str] = {}
    proxy_pids: dict[str, int] = {}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    me = [sys.executable, str(Path(__file__).resolve())]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="drpo-bench-") as root:
        homes = {name: Path(root) / name for name in methods}
        versions = {name: seed_store(homes[name], name, args.library_size) for name in methods}
        try:
            procs.append(subprocess.Popen([*me, "--role", "backend", "--port", str(backend_port)], env=env))
            wait_until_ok(backend_url + "/models", 30.0, procs[-1], name="fake backend")
            for name in methods:
                home, version = str(homes[name]), versions[name]
                port = free_port()
                command = [*me, "--role", "proxy", "--port", str(port), "--backend-url", backend_url, "--home", home]
                command += ["--profile", args.profile] if args.profile else []
                procs.append(subprocess.Popen(command, env=env))
                wait_until_ok(f"http://127.0.0.1:{port}/ready", 30.0, procs[-1], name=f"proxy ({name})")
                proxy_urls[name] = f"http://127.0.0.1:{port}/v1"
                proxy_pids[name] = procs[-1].pid
                check = httpx.post(proxy_urls[name] + "/chat/completions", json=CLIENT_BODY, timeout=10)
                if check.headers.get("x-drpo-prompt-version") != version:
                    raise RuntimeError(f"the proxy did not inject {version}: {check.status_code} {check.headers}")
            print(
                f"backend {backend_url}, proxies {proxy_urls} (retrieval method each), "
                f"{args.library_size}-example labelled library from the default artifact"
            )
            print(f"load average before measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            results = uvloop.run(
                measure(
                    backend_url,
                    proxy_urls,
                    args.requests,
                    args.throughput_requests,
                    args.stream_requests,
                    procs[0].pid,
                    proxy_pids,
                    args.throughput_rounds,
                )
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if args.profile:
        import pstats

        print(f"proxy profile (cProfile, {args.profile}), top functions by own time:")
        pstats.Stats(args.profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    for name, figures in results.items():
        verdict = {key: figures[key] <= limit for key, limit in TARGETS.items()}
        verdict["rps_ratio"] = figures["rps_proxy"] >= 0.5 * figures["rps_direct"]
        print(f"{name}: targets met: {verdict}")
    # One method: its figures (the historical format); several: keyed by method.
    print(json.dumps(results[methods[0]] if len(methods) == 1 else results))


if __name__ == "__main__":
    main()
