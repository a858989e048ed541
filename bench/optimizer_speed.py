"""Optimizer speed: concurrency 1 vs 8 on the same search, and resume after kill -9.

A fake OpenAI-compatible server (tests/fakes_llm.py, in a thread of this process, on a
free loopback port) answers every call after a fixed latency (default 200 ms) with a
reply that depends only on the request. The same fixed search (`drpo optimize` in a
subprocess, fresh DRPO_HOME each, so no cache is shared) runs once with --concurrency 1
and once with --concurrency 8; speedup = ratio of the runs' own elapsed time (from their
trace.json, excluding interpreter start-up). Identical = same artifact version and the
same beam search state. Then a third run is SIGKILLed after a number of calls and
resumed; a "repeated call" is a request whose answer the server had delivered before the
kill and that reached it again after the resume.

Usage: .venv/bin/python bench/optimizer_speed.py [--latency 0.2]
The last line is JSON: {"speedup", "identical_result", "resume_repeated_calls"}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes_llm import FakeOpenAIServer  # noqa: E402

SEARCH = [
    "--beam", "2", "--actions", "4", "--depth", "3", "--max-depth-increase", "0",
    "--icl-queries", "8", "--icl-iters", "2", "--val-size", "8", "--seed", "3", "--quiet",
]  # fmt: skip


def write_queries(path: Path) -> None:
    topics = ["tea", "bicycles", "python", "taxes", "poetry", "sleep", "rust", "gardens", "chess", "maps"]
    lines = [f"How do I get better at {t} in {n} weeks?" for n in (2, 3) for t in topics]
    path.write_text("\n".join(lines) + "\n")


def optimize(home: Path, server: FakeOpenAIServer, queries: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DRPO_HOME": str(home)}
    command = [sys.executable, "-m", "drpo.cli", "optimize", "--model", server.model, "--backend", server.base_url]
    command += ["--queries", str(queries), *SEARCH, *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes], timeout: float = 600) -> None:
    _, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise SystemExit(f"optimize failed ({process.returncode}): {err.decode()[-2000:]}")


def run_state(home: Path) -> dict[str, object]:
    runs = [p for p in (home / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return dict(json.loads((runs[0] / "state.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per fake LLM call")
    parser.add_argument("--kill-after", type=int, default=70, help="server answers before the SIGKILL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drpo-bench-") as tmp, FakeOpenAIServer(args.latency) as server:
        base = Path(tmp)
        queries = base / "queries.txt"
        write_queries(queries)
        results = {}
        for concurrency in (1, 8):
            home = base / f"c{concurrency}"
            server.phase = f"c{concurrency}"
            finish(optimize(home, server, queries, ["--concurrency", str(concurrency)]))
            state = run_state(home)
            sessions = state["sessions"]
            assert isinstance(sessions, list)
            calls = sum(1 for r in server.records if r.phase == server.phase)
            results[concurrency] = (state, float(sessions[-1]["elapsed_s"]), calls)
            print(
                f"concurrency {concurrency}: {calls} calls to the fake server ({args.latency * 1000:.0f} ms each), "
                f"run elapsed {results[concurrency][1]:.2f}s (measured inside the run, start-up excluded)"
            )
        (s1, t1, _), (s8, t8, _) = results[1], results[8]
        identical = s1["artifact_version"] == s8["artifact_version"] and s1["beam"] == s8["beam"]
        speedup = t1 / t8
        print(
            f"speedup = elapsed(c=1) / elapsed(c=8) = {t1:.2f}s / {t8:.2f}s = {speedup:.2f}x; "
            f"identical result (artifact version {s1['artifact_version']} vs {s8['artifact_version']}, "
            f"same beam state): {identical}"
        )

        home = base / "killed"
        server.phase = "killed"
        process = optimize(home, server, queries, ["--concurrency", "8"])
        deadline = time.monotonic() + 300
        while sum(1 for r in server.records if r.phase == "killed") < args.kill_after:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the run ended before it could be killed; raise --kill-after")
            time.sleep(0.01)
        # Kill half a latency after that answer: mid-way between waves of calls, so what the
        # count measures is the checkpoint + cache, not the few ms a reply spends being parsed.
        time.sleep(args.latency / 2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        time.sleep(args.latency * 2)  # let requests that were in flight land in the records
        before = [r for r in server.records if r.phase == "killed"]
        delivered = {r.key for r in before if r.delivered}
        cut_off = [r for r in before if not r.delivered]
        server.phase = "resume"
        run_id = next(p.name for p in (home / "runs").iterdir() if p.is_dir())
        env = {**os.environ, "DRPO_HOME": str(home)}
        resume = subprocess.run(
            [sys.executable, "-m", "drpo.cli", "optimize", "--resume", run_id, "--concurrency", "8", "--quiet"],
            cwd=ROOT, env=env, capture_output=True, timeout=600,
        )  # fmt: skip
        if resume.returncode != 0:
            raise SystemExit(f"resume failed: {resume.stderr.decode()[-2000:]}")
        after = [r for r in server.records if r.phase == "resume"]
        repeated = sum(1 for r in after if r.key in delivered)
        resumed_state = run_state(home)
        same_as_uninterrupted = resumed_state["artifact_version"] == s1["artifact_version"]
        print(
            f"kill -9 after {len(before)} requests reached the server ({len(delivered)} answered, "
            f"{len(cut_off)} in flight and cut off by the kill); resume sent {len(after)} requests, "
            f"{repeated} of them already answered before the kill; resumed result equals the "
            f"uninterrupted one: {same_as_uninterrupted}"
        )
    print(json.dumps({"speedup": round(speedup, 2), "identical_result": identical, "resume_repeated_calls": repeated}))


if __name__ == "__main__":
    main()
