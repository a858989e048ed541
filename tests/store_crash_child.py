"""Subprocess helper for tests/test_store_crash.py: crash a store writer after each write step.

``kill-loop SOURCE_HOME WORK OP ARG [EVERY]``: for N = 1, 2, ... copy SOURCE_HOME to
WORK/kill-N, fork a child that opens the store there and runs OP (``import``,
``import-activate``, ``activate``, ``rollback``, or ``migrate``: what opening a store of the
first layout does), and SIGKILL that child right after its Nth write step, until an N is
large enough for the operation to finish. With EVERY > 1, a first run counts the steps and
the kills sample them: the first and last 5, every EVERY-th, and the first and last step of
each kind (statement or file operation). A write step is any SQLite statement that is not a
SELECT (BEGIN, INSERT, UPDATE, DELETE, COMMIT) and any file diskcache writes or removes next
to the database. Prints JSON: the homes killed, the home where OP completed, and what each
step was.

``read-loop HOME STOP_FILE READY_FILE``: load the proxy's startup snapshot
(``ArtifactSnapshot.load_now``) and the active artifact over and over until STOP_FILE
exists; prints JSON with the number of loads and the first failures.

``cli HOME...``: in a forked child per command, run the ``drpo`` console entry point
(``drpo.cli:main``, what ``.venv/bin/drpo`` runs) on each home: ``prompts list``,
``prompts list m --versions``, ``prompts show m``, ``prompts rollback m``. Importing the CLI
once and forking keeps hundreds of runs fast. Prints JSON exit codes and stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache.core

MODEL = "m"
CLI_COMMANDS = (
    ["prompts", "list"],
    ["prompts", "list", MODEL, "--versions"],
    ["prompts", "show", MODEL],
    ["prompts", "rollback", MODEL],
)


def _arm(kill_after: int, steps: list[str]) -> None:
    """Make diskcache SIGKILL this process right after its ``kill_after``-th write step."""

    def step(what: str) -> None:
        steps.append(what)
        if len(steps) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    original_sql = diskcache.core.Cache._sql

    def counting_sql(cache: diskcache.Cache) -> Callable[..., Any]:
        execute = original_sql.fget(cache)

        def run(statement: str, *args: Any, **kwargs: Any) -> Any:
            result = execute(statement, *args, **kwargs)
            if not statement.lstrip().upper().startswith("SELECT"):
                step(" ".join(statement.split()[:3]))
            return result

        return run

    original_store = diskcache.core.Disk.store
    original_remove = diskcache.core.Disk.remove

    def counting_store(disk: diskcache.Disk, *args: Any, **kwargs: Any) -> Any:
        result = original_store(disk, *args, **kwargs)
        if result[2] is not None:  # a filename: the value went to its own file
            step("write value file")
        return result

    def counting_remove(disk: diskcache.Disk, file_path: str) -> None:
        original_remove(disk, file_path)
        step("remove value file")

    diskcache.core.Cache._sql = property(counting_sql)
    diskcache.core.Disk.store = counting_store
    diskcache.core.Disk.remove = counting_remove


def _operate(home: Path, op: str, arg: str, kill_after: int) -> None:
    """Run in the forked child: never returns."""
    from prompts.store import PromptStore

    steps: list[str] = []
    if op == "migrate":  # what PromptStore() does first on a store of the first layout
        from prompts.store_layout import open_cache
        from prompts.store_migrate import ensure_schema

        cache = open_cache(home / "store")
        _arm(kill_after, steps)
        ensure_schema(cache)
        (home / "steps.json").write_text(json.dumps(steps))
        os._exit(0)
    store = PromptStore(home / "store")
    _arm(kill_after, steps)
    if op == "import":
        store.import_file(Path(arg))
    elif op == "import-activate":
        store.import_file(Path(arg), activate=True)
    elif op == "activate":
        store.activate(MODEL, arg)
    elif op == "rollback":
        store.rollback(MODEL)
    else:
        raise SystemExit(f"unknown op {op}")
    (home / "steps.json").write_text(json.dumps(steps))
    os._exit(0)


def _run_child(source: Path, home: Path, op: str, arg: str, kill_after: int) -> str:
    """``killed``, ``completed``, or an error description."""
    shutil.copytree(source, home)
    pid = os.fork()
    if pid == 0:
        try:
            _operate(home, op, arg, kill_after)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "completed"
    return f"child killed after step {kill_after} ended with status {status}"


def _sampled_points(steps: list[str], every: int) -> list[int]:
    """The first and last 5 steps, every ``every``-th, and the first and last of each kind."""
    total = len(steps)
    points = set(range(1, min(total, 5) + 1)) | set(range(max(1, total - 4), total + 1))
    points |= set(range(every, total + 1, every))
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for number, kind in enumerate(steps, 1):
        first.setdefault(kind, number)
        last[kind] = number
    return sorted(points | set(first.values()) | set(last.values()))


def kill_loop(source: Path, work: Path, op: str, arg: str, every: int = 1) -> dict[str, Any]:
    """Kill after step 1, 2, ... until OP completes; with ``every`` > 1, after sampled steps."""
    killed: list[str] = []
    if every > 1:
        dry = work / "dry-run"
        outcome = _run_child(source, dry, op, arg, 10**9)
        if outcome != "completed":
            return {"error": outcome}
        steps = json.loads((dry / "steps.json").read_text())
        for kill_after in _sampled_points(steps, every):
            home = work / f"kill-{kill_after:05d}"
            outcome = _run_child(source, home, op, arg, kill_after)
            if outcome != "killed":
                return {"error": f"step {kill_after}: {outcome}", "killed": killed}
            killed.append(str(home))
        return {"killed": killed, "completed": str(dry), "steps": steps}
    for kill_after in range(1, 100_000):
        home = work / f"kill-{kill_after:05d}"
        outcome = _run_child(source, home, op, arg, kill_after)
        if outcome == "killed":
            killed.append(str(home))
            continue
        if outcome == "completed":
            steps = json.loads((home / "steps.json").read_text())
            return {"killed": killed, "completed": str(home), "steps": steps}
        return {"error": outcome, "killed": killed}
    return {"error": "operation never completed", "killed": killed}


def _run_cli(home: Path, args: list[str]) -> dict[str, Any]:
    out, err = home / "cli.out", home / "cli.err"
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            with out.open("w") as stdout, err.open("w") as stderr:
                os.dup2(stdout.fileno(), 1)
                os.dup2(stderr.fileno(), 2)
                os.environ["DRPO_HOME"] = str(home)
                from drpo.cli import main
                from prompts.config import get_settings

                get_settings.cache_clear()
                sys.argv = ["drpo", *args]
                try:
                    main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return {
        "args": args,
        "exit": code,
        "stderr": err.read_text()[-500:],
        "stdout_lines": len(out.read_text().splitlines()),
    }


def run_cli(homes: list[Path]) -> dict[str, Any]:
    from drpo.cli import main

    # Import the CLI and what its commands import lazily once, before forking: a read-only
    # command on a scratch copy pulls all of it in.
    scratch = homes[0].with_name("cli-warm-up")
    shutil.copytree(homes[0], scratch)
    os.environ["DRPO_HOME"] = str(scratch)
    sys.argv = ["drpo", "prompts", "show", MODEL]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.suppress(SystemExit):
        main()
    return {str(home): [_run_cli(home, list(args)) for args in CLI_COMMANDS] for home in homes}


def read_loop(home: Path, stop_file: Path, ready_file: Path) -> dict[str, Any]:
    from prompts.store import PromptStore
    from proxy.snapshot import ArtifactSnapshot

    loads, failures, versions = 0, list[str](), set[str]()
    with PromptStore(home / "store") as store:
        while not stop_file.exists():
            try:
                snapshot = ArtifactSnapshot(store, 1.0)
                snapshot.load_now()
                version = snapshot.get(MODEL).artifact.version
                versions.add(version)
                if store.get(MODEL, version).version != version:
                    failures.append(f"asked for {version}, got another version")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            loads += 1
            if loads == 1:
                ready_file.write_text("ready")
    return {"loads": loads, "failed": len(failures), "failures": failures[:5], "versions_seen": len(versions)}


def main() -> None:
    command = sys.argv[1]
    if command == "kill-loop":
        source, work, op, arg = sys.argv[2:6]
        every = int(sys.argv[6]) if len(sys.argv) > 6 else 1
        print(json.dumps(kill_loop(Path(source), Path(work), op, arg, every)))
    elif command == "read-loop":
        home, stop_file, ready_file = map(Path, sys.argv[2:5])
        print(json.dumps(read_loop(home, stop_file, ready_file)))
    elif command == "cli":
        print(json.dumps(run_cli([Path(p) for p in sys.argv[2:]])))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
