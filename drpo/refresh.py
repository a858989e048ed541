"""One background refresh of one model: optimize → eval → gate → activate or keep as candidate.

Each step runs as a child process of the worker (``drpo optimize``, then ``drpo prompts promote``):
a crash, a leak or an out-of-memory in a run ends that run, never the worker, and the child is
killed with the worker (``PR_SET_PDEATHSIG``). The run is recorded in the store as it advances
(``begin_refresh`` / ``update_refresh`` / ``finish_refresh``), so a worker that was stopped or
killed finds the unfinished run on restart and resumes it: the optimizer from its checkpoint
(``--resume``, every LLM call it already made answered from the cache), the gate from the start
(its answers are cached too).

A file lock per model keeps two workers (a Deployment and a CronJob, say) from refreshing the
same model at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from drpo.actor import ACTOR_ENV
from drpo.child_server import same_home_env, spawn_tied_to_parent
from drpo.promote import EXIT_KEPT_AS_CANDIDATE, gate_sources
from drpo.worker_metrics import WorkerMetrics
from optimizer.checkpoint import RunDir, RunState, new_run_id
from prompts.config import ConfigError, RefreshOptions, Settings
from prompts.errors import PromptsError
from prompts.store import open_store

logger = logging.getLogger(__name__)

EXIT_OPTIMIZE_STOPPED = 3  # `drpo optimize`: budget used up or SIGTERM; the checkpoint is resumable
WORKER_ACTOR = "worker"
# Options the worker sets itself; a config file may not.
_RESERVED = {"model", "resume", "run_id", "activate", "dry_run", "config"}

Outcome = str  # promoted | candidate | failed | stopped | interrupted | busy


def optimize_flags() -> dict[str, str]:
    """``drpo optimize`` option names (underscored) → their flag, read from the command itself."""
    from drpo.cli_optimize import optimize

    flags = {}
    for name, parameter in inspect.signature(optimize).parameters.items():
        decls = getattr(parameter.default, "param_decls", None) or ()
        flag = next((d for d in decls if d.startswith("--")), None)
        if flag is not None:
            flags[name] = flag
    return flags


def optimize_args(options: dict[str, Any]) -> list[str]:
    """A config's ``optimize:`` mapping as ``drpo optimize`` arguments; ConfigError on unknown keys."""
    flags = optimize_flags()
    args: list[str] = []
    for name, value in options.items():
        key = name.replace("-", "_")
        if key in _RESERVED:
            raise ConfigError(f"refresh: optimize option {name!r} is set by the worker itself")
        if key not in flags:
            known = ", ".join(sorted(k for k in flags if k not in _RESERVED))
            raise ConfigError(f"refresh: unknown optimize option {name!r}; known: {known}")
        if isinstance(value, bool):
            args += [flags[key]] if value else []
        elif isinstance(value, list):
            for item in value:
                args += [flags[key], str(item)]
        elif value is not None:
            args += [flags[key], str(value)]
    return args


def gate_args(options: RefreshOptions) -> list[str]:
    """The config's ``gate:`` mapping as ``drpo prompts promote`` arguments (sets by name, files by path)."""
    gate = options.gate
    args: list[str] = []
    names, files = gate_sources(gate.all_sets())
    for name in names:
        args += ["--set", name]
    for file in files:
        args += ["--queries", str(file)]
    if gate.margin is not None:
        args += ["--margin", str(gate.margin)]
    if gate.objective is not None:
        args += ["--objective", gate.objective]
    if gate.max_tokens is not None:
        args += ["--max-tokens", str(gate.max_tokens)]
    return args


def check_refresh_config(refresh: dict[str, RefreshOptions]) -> None:
    """Fail at start, with the model named, rather than hours later when a run is due."""
    for model, options in refresh.items():
        try:
            optimize_args(options.optimize)
            gate_args(options)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (model {model!r})") from exc


@dataclass
class RefreshResult:
    outcome: Outcome
    message: str
    record: dict[str, Any]


class Stopping(Exception):
    """The worker was asked to stop while a child ran; the run stays unfinished, to be resumed."""


class RefreshRunner:
    """Runs refreshes as child processes, recording each in the store."""

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        stop: threading.Event | None = None,
        command: list[str] | None = None,
        echo: IO[str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.command = command or [sys.executable, "-m", "drpo"]
        self.echo = echo if echo is not None else sys.stderr
        self._child: subprocess.Popen[bytes] | None = None
        self._child_lock = threading.Lock()
        self.clock = clock or (lambda: datetime.now(UTC))  # start times feed the schedule

    @property
    def home(self) -> Path:
        return self.settings.home / "refresh"

    # -- stopping --------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop at the next checkpoint: the running child gets SIGTERM (the optimizer checkpoints and exits)."""
        self.stop.set()
        with self._child_lock:
            if self._child is not None and self._child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._child.send_signal(signal.SIGTERM)

    # -- one run -------------------------------------------------------------------------------------

    def run(self, model: str, options: RefreshOptions, trigger: str) -> RefreshResult:
        with self._lock_for(model) as held:
            if not held:
                message = f"a refresh of {model} is already running in another worker"
                return RefreshResult("busy", message, {})
            try:
                return self._run_locked(model, options, trigger)
            except PromptsError as exc:
                # The store refused to record the run (e.g. the shared registry is down): this
                # tick is lost, the worker is not; an open run is resumed on a later tick.
                logger.warning("refresh of %s could not be recorded: %s", model, exc)
                return RefreshResult("failed", f"refresh of {model} could not be recorded: {exc}", {})

    def _run_locked(self, model: str, options: RefreshOptions, trigger: str) -> RefreshResult:
        with open_store(self.settings) as store:
            record = store.current_refresh(model)
            if record is None:
                record = store.begin_refresh(
                    model,
                    started_at=self.clock().isoformat(),
                    trigger=trigger,
                    stage="optimize",
                    optimizer_run=new_run_id(),
                    baseline=store.active_version(model),
                    resumed=0,
                )
                logger.info("refresh %s of %s started (%s)", record["id"], model, trigger)
            else:
                record = store.update_refresh(model, resumed=int(record.get("resumed", 0)) + 1)
                logger.info("refresh %s of %s resumed at stage %s", record["id"], model, record["stage"])
        log_path = self.home / "logs" / f"{record['id']}.log"
        try:
            if record["stage"] == "optimize":
                advanced = self._optimize(model, options, record, log_path)
                if isinstance(advanced, RefreshResult):
                    return advanced
                record = advanced
            return self._gate(model, options, record, log_path)
        except Stopping:
            message = f"stopped; refresh {record['id']} of {model} resumes at its checkpoint on the next start"
            logger.info(message)
            return RefreshResult("interrupted", message, record)
        except Exception as exc:  # a worker bug in one run must not end the worker
            logger.exception("refresh %s of %s failed", record["id"], model)
            return self._finish(model, "failed", error=f"{type(exc).__name__}: {exc}")

    def _optimize(
        self, model: str, options: RefreshOptions, record: dict[str, Any], log: Path
    ) -> dict[str, Any] | RefreshResult:
        """Run (or resume) the optimizer; the record at stage "gate", or the run's end if it failed."""
        run_id = str(record["optimizer_run"])
        run_dir = RunDir(self.settings.runs_dir, run_id)
        state = run_dir.load() if run_dir.exists() else None
        if state is None or state.status != "done":
            if state is None:
                args = ["optimize", "--model", model, "--run-id", run_id, *optimize_args(options.optimize)]
            else:
                args = ["optimize", "--resume", run_id]
            code = self._child_run(args, log)
            state = run_dir.load() if run_dir.exists() else None
            if code == EXIT_OPTIMIZE_STOPPED and self.stop.is_set():
                raise Stopping
            if code != 0 or state is None:
                reason = state.stop_reason if state is not None and state.stop_reason else _tail(log)
                outcome = "stopped" if code == EXIT_OPTIMIZE_STOPPED else "failed"
                return self._finish(model, outcome, error=f"optimize exited with {code}: {reason}", **_spend(state))
        if state.artifact_version is None:
            return self._finish(model, "failed", error="the optimizer finished without a version", **_spend(state))
        with open_store(self.settings) as store:
            return store.update_refresh(model, stage="gate", candidate=state.artifact_version, **_spend(state))

    def _gate(self, model: str, options: RefreshOptions, record: dict[str, Any], log: Path) -> RefreshResult:
        version = str(record["candidate"])
        code = self._child_run(["prompts", "promote", model, version, *gate_args(options)], log)
        if self.stop.is_set() and code not in (0, 1, EXIT_KEPT_AS_CANDIDATE):
            raise Stopping
        with open_store(self.settings) as store:
            reports = store.eval_reports(model, version)
        gated = next((r for r in reversed(reports) if "gate" in r), None)  # the report this gate stored
        gate = gated["gate"] if gated else {}
        scores = {"candidate": gate.get("candidate", {}), "baseline": gate.get("baseline", {})} if gated else {}
        reason = str(gate.get("reason", ""))
        report_id = gated["id"] if gated else None
        if code == 0:
            return self._finish(model, "promoted", scores=scores, reason=reason, report=report_id)
        if code == EXIT_KEPT_AS_CANDIDATE:
            return self._finish(model, "candidate", scores=scores, reason=reason, report=report_id)
        return self._finish(model, "failed", error=f"the gate exited with {code}: {_tail(log)}")

    def _finish(self, model: str, outcome: Outcome, **fields: Any) -> RefreshResult:
        with open_store(self.settings, actor=WORKER_ACTOR) as store:
            record = store.finish_refresh(model, outcome, ended_at=self.clock().isoformat(), **fields)
        return self._finished(model, record)

    def _finished(self, model: str, record: dict[str, Any]) -> RefreshResult:
        outcome = str(record.get("outcome"))
        version = record.get("candidate")
        if outcome == "promoted":
            message = f"promoted {version}"
        elif outcome == "candidate":
            message = f"kept {version} as candidate: {record.get('reason') or 'the gate did not pass it'}"
        else:
            message = f"refresh of {model} {outcome}: {record.get('error') or record.get('reason') or ''}".rstrip(": ")
        if self.metrics is not None:
            self.metrics.observe(model, record)
        logger.info(message)
        return RefreshResult(outcome, message, record)

    # -- child processes -------------------------------------------------------------------------------

    def _child_run(self, args: list[str], log: Path) -> int:
        """Run ``drpo ARGS`` to completion, its output appended to ``log`` and echoed here."""
        if self.stop.is_set():
            raise Stopping
        log.parent.mkdir(parents=True, exist_ok=True)
        # Children share the worker's home and config file, and go on record as the worker.
        env = {**same_home_env(self.settings.home, self.settings.config), ACTOR_ENV: WORKER_ACTOR}
        with open(log, "ab") as sink:
            start = sink.tell()
            child = spawn_tied_to_parent([*self.command, *args], log=sink, env=env)
            with self._child_lock:
                self._child = child
            follower = threading.Thread(target=self._follow, args=(log, start, child), daemon=True)
            follower.start()
            try:
                code = child.wait()
            finally:
                with self._child_lock:
                    self._child = None
                follower.join(timeout=2)
        return code

    def _follow(self, log: Path, offset: int, child: subprocess.Popen[bytes]) -> None:
        """Echo the child's lines where the worker runs, so its progress is visible there."""
        with open(log, "rb") as source:
            source.seek(offset)
            while True:
                line = source.readline()
                if line:
                    with contextlib.suppress(ValueError, OSError):
                        self.echo.write(line.decode("utf-8", "replace"))
                        self.echo.flush()
                elif child.poll() is not None:
                    return
                else:
                    time.sleep(0.2)

    @contextlib.contextmanager
    def _lock_for(self, model: str) -> Iterator[bool]:
        """An exclusive, non-blocking lock per model, released when the process ends whatever the cause."""
        locks = self.home / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(model.encode()).hexdigest()[:24]
        with open(locks / f"{name}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _spend(state: RunState | None) -> dict[str, int]:
    """Fresh LLM calls and tokens over every session of an optimizer run."""
    sessions = state.sessions if state is not None else []
    return {
        "calls": sum(int(s.get("fresh_calls", 0)) for s in sessions),
        "tokens": sum(int(s.get("prompt_tokens", 0)) + int(s.get("completion_tokens", 0)) for s in sessions),
    }


def _tail(log: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])
    return "(no output)"
