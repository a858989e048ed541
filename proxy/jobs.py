"""Long admin actions as background processes: promotion through the gate, and refresh runs.

The proxy must not import the optimizer (the import rule), and a gate or an optimization can take
minutes to hours, far longer than an HTTP request should wait. So the admin API starts the CLI
(``python -m drpo prompts promote`` / ``drpo worker --run-now``) as a child process and answers
``202`` with a job; ``GET /admin/jobs/{id}`` tells how it ended. The child inherits the proxy's
home and config file, and goes on record in the audit log as the admin key's name (``DRPO_ACTOR``).

Jobs are kept in memory per proxy process (their effects are in the store: versions, activations,
eval reports, refresh runs); output goes to ``DRPO_HOME/jobs/ID.log``. One job per kind and model
runs at a time. A job outlives a proxy that stops: a promotion half-way through the gate finishes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

JobKind = Literal["promote", "refresh"]
JobStatus = Literal["running", "succeeded", "failed"]
EXIT_KEPT_AS_CANDIDATE = 4  # promote and `worker --run-now`: the gate kept the version as a candidate
_OUTPUT_TAIL = 4000
_KEPT_JOBS = 200


class JobBusy(Exception):
    """A job of the same kind for the same model is still running."""


class Job(BaseModel):
    id: str
    kind: JobKind
    model: str
    version: str | None = None
    actor: str
    status: JobStatus = "running"
    exit_code: int | None = None
    outcome: str = ""  # the command's last line: "promoted V: ...", "kept V as candidate: ..."
    output: str = ""  # the tail of its output
    started_at: str
    ended_at: str | None = None


class JobRunner:
    def __init__(
        self,
        home: Path,
        config: Path | None = None,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.config = config
        self.env = dict(env or {})  # e.g. the proxy's backend, so a gate answers where the proxy forwards
        self.command = list(command or [sys.executable, "-m", "drpo"])
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start_promote(self, model: str, version: str, actor: str) -> Job:
        return self._start("promote", model, actor, ["prompts", "promote", model, version], version)

    def start_refresh(self, model: str, actor: str) -> Job:
        return self._start("refresh", model, actor, ["worker", "--run-now", model, "--metrics-port", "0"])

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._with_output(job)

    def recent(self) -> list[Job]:
        with self._lock:
            return [self._with_output(job) for job in reversed(self._jobs.values())]

    def _log(self, job_id: str) -> Path:
        return self.home / "jobs" / f"{job_id}.log"

    def _with_output(self, job: Job) -> Job:
        try:
            with open(self._log(job.id), "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - _OUTPUT_TAIL))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        return job.model_copy(update={"output": text})

    def _start(self, kind: JobKind, model: str, actor: str, args: list[str], version: str | None = None) -> Job:
        with self._lock:
            if any(j.kind == kind and j.model == model and j.status == "running" for j in self._jobs.values()):
                raise JobBusy(f"a {kind} job for {model!r} is already running")
            job_id = f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
            job = Job(id=job_id, kind=kind, model=model, version=version, actor=actor, started_at=_now())
            log_path = self._log(job_id)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **self.env, "DRPO_ACTOR": actor, "DRPO_HOME": str(self.home)}
            if self.config is not None:
                env["DRPO_CONFIG"] = str(self.config)
            with open(log_path, "ab") as log:
                child = subprocess.Popen(
                    [*self.command, *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # a Ctrl-C meant for the proxy does not cut a gate short
                )
            self._jobs[job_id] = job
            self._forget_old()
        threading.Thread(target=self._wait, args=(job_id, child), name=f"job-{job_id}", daemon=True).start()
        return job

    def _wait(self, job_id: str, child: subprocess.Popen[bytes]) -> None:
        code = child.wait()
        lines = [line for line in self._with_output(self._jobs[job_id]).output.splitlines() if line.strip()]
        with self._lock:
            job = self._jobs[job_id]
            ok = code in (0, EXIT_KEPT_AS_CANDIDATE)  # a version kept as candidate is a verdict, not a failure
            self._jobs[job_id] = job.model_copy(
                update={
                    "status": "succeeded" if ok else "failed",
                    "exit_code": code,
                    "outcome": lines[-1].strip() if lines else "",
                    "ended_at": _now(),
                }
            )

    def _forget_old(self) -> None:
        """Keep the newest jobs only (their logs stay on disk)."""
        finished = [j for j in self._jobs.values() if j.status != "running"]
        for job in finished[: max(0, len(self._jobs) - _KEPT_JOBS)]:
            del self._jobs[job.id]


def _now() -> str:
    return datetime.now(UTC).isoformat()
