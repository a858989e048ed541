"""What the dashboard pages show, read from the store and the optimizer's run directories.

The proxy may not import the optimizer, so a run's checkpoint (``runs/RUN_ID/state.json``, or
``trace.json`` when only that is left) is read as plain JSON here, tolerating missing fields:
a run written by an older or newer optimizer still renders what it has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from prompts.store import PromptStore, VersionInfo
from proxy.ui_charts import Bar, BarGroup, Marker, Series

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LABEL_ORDER = ("harmful", "lookalike", "ordinary")
COUNTERS = ("fresh_calls", "cached_calls", "prompt_tokens", "completion_tokens", "cached_tokens", "transient_retries")


# -- versions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    info: VersionInfo
    status: str  # active | a/b | candidate | previous
    weight: int | None = None  # share in the A/B split, if in one


def version_rows(store: PromptStore, model: str) -> list[VersionRow]:
    """Every version of ``model``, newest first, with where it stands.

    ``candidate``: stored but never active (an optimizer result waiting for the gate or a
    person); ``previous``: was active once.
    """
    split = store.split(model) or {}
    was_active = {entry["version"] for entry in store.history(model)}
    rows = []
    for info in reversed(store.versions(model)):
        if info.active:
            status = "active"
        elif info.version in split:
            status = "a/b"
        elif info.version in was_active:
            status = "previous"
        else:
            status = "candidate"
        rows.append(VersionRow(info, status, split.get(info.version)))
    return rows


# -- optimization runs -------------------------------------------------------------------------------


def run_dir(runs_dir: Path, run_id: str) -> Path | None:
    """The directory of a run id, or None for an id that is not a plain name (no path tricks)."""
    if not RUN_ID.match(run_id):
        return None
    return runs_dir / run_id


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class RunView:
    run_id: str
    status: str
    stop_reason: str
    model: str
    config: dict[str, Any]
    nodes: list[dict[str, Any]]
    beam: list[str]
    levels_done: int
    extensions: int
    beam_stop_reason: str
    validation: list[dict[str, Any]]
    chosen: str | None
    choice_reasons: dict[str, str]
    artifact_version: str | None
    sessions: list[dict[str, Any]]
    library: dict[str, Any] | None
    totals: dict[str, float] = field(default_factory=dict)
    by_role: dict[str, int] = field(default_factory=dict)


def load_run(runs_dir: Path, run_id: str) -> RunView | None:
    """A run from its checkpoint (state.json, else trace.json); None when neither is readable."""
    where = run_dir(runs_dir, run_id)
    if where is None:
        return None
    data = _read_json(where / "state.json")
    from_state = data is not None
    data = data or _read_json(where / "trace.json")
    if data is None:
        return None
    beam = data.get("beam") if from_state else {"nodes": data.get("nodes"), "beam": data.get("beam")}
    beam = beam if isinstance(beam, dict) else {}
    nodes = beam.get("nodes") or {}
    node_list = list(nodes.values()) if isinstance(nodes, dict) else list(nodes)
    validation = data.get("validation") or {}
    validation_list = list(validation.values()) if isinstance(validation, dict) else list(validation)
    raw_config = data.get("config")
    config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
    sessions = [s for s in data.get("sessions") or [] if isinstance(s, dict)]
    view = RunView(
        run_id=str(data.get("run_id") or run_id),
        status=str(data.get("status") or "unknown"),
        stop_reason=str(data.get("stop_reason") or ""),
        model=str(config.get("model") or ""),
        config=config,
        nodes=[n for n in node_list if isinstance(n, dict)],
        beam=[str(b) for b in beam.get("beam") or []],
        levels_done=int(beam.get("levels_done") or 0),
        extensions=int(beam.get("extensions") or 0),
        beam_stop_reason=str(beam.get("stop_reason") or ""),
        validation=[v for v in validation_list if isinstance(v, dict)],
        chosen=data.get("chosen"),
        choice_reasons=dict(data.get("choice_reasons") or {}),
        artifact_version=data.get("artifact_version"),
        sessions=sessions,
        library=data.get("library") if isinstance(data.get("library"), dict) else None,
    )
    for session in sessions:
        for name in (*COUNTERS, "elapsed_s"):
            value = session.get(name)
            if isinstance(value, int | float):
                view.totals[name] = view.totals.get(name, 0) + value
        for role, calls in (session.get("by_role") or {}).items():
            view.by_role[str(role)] = view.by_role.get(str(role), 0) + int(calls)
    return view


def list_runs(runs_dir: Path, limit: int = 200) -> list[RunView]:
    """Runs under ``runs_dir``, newest first (run ids start with their UTC start time)."""
    try:
        names = sorted((p.name for p in runs_dir.iterdir() if p.is_dir()), reverse=True)
    except OSError:
        return []
    runs = (load_run(runs_dir, name) for name in names[:limit])
    return [run for run in runs if run is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def node_mean_reward(node: dict[str, Any]) -> float | None:
    """What the beam ranks by: the mean reward along the node's path (unscored levels left out)."""
    return _mean([float(r) for r in node.get("path_rewards") or [] if isinstance(r, int | float)])


def reward_curve(run: RunView) -> tuple[list[Series], list[Marker]]:
    """Per beam level: the best and the mean path reward over that level's nodes; skip/extend markers."""
    levels: dict[int, list[dict[str, Any]]] = {}
    for node in run.nodes:
        levels.setdefault(int(node.get("level") or 0), []).append(node)
    best, mean, markers = [], [], []
    for level in sorted(levels):
        rewards = [r for n in levels[level] if (r := node_mean_reward(n)) is not None]
        best.append((level, max(rewards) if rewards else None))
        mean.append((level, _mean(rewards)))
        actions = [str(n.get("action")) for n in levels[level]]
        if actions and all(a == "skip" for a in actions):
            markers.append(Marker(level, "all skipped: depth +1"))
        elif "skip" in actions:
            markers.append(Marker(level, "skip"))
    return [Series("best", best), Series("mean", mean)], markers


# -- eval reports ------------------------------------------------------------------------------------


def report_labels(report: dict[str, Any]) -> list[str]:
    present = {label for c in report.get("conditions", []) for label in (c.get("metrics") or {})}
    return [label for label in LABEL_ORDER if label in present] + sorted(present - set(LABEL_ORDER))


def _bar(interval: Any) -> Bar:
    if not isinstance(interval, dict) or not isinstance(interval.get("value"), int | float):
        return Bar(None)
    return Bar(float(interval["value"]), interval.get("low"), interval.get("high"), interval.get("n"))


def refusal_groups(report: dict[str, Any]) -> tuple[list[str], list[BarGroup]]:
    """Refusal rate per label (groups), one bar per condition (raw, default, versions)."""
    conditions = report.get("conditions", [])
    groups = [
        BarGroup(label, [_bar(((c.get("metrics") or {}).get(label) or {}).get("refusal")) for c in conditions])
        for label in report_labels(report)
    ]
    return [str(c.get("name")) for c in conditions], groups


def judge_groups(report: dict[str, Any], label: str) -> tuple[list[str], list[BarGroup]]:
    """Judge score (1-5) per aspect on one label's queries (groups), one bar per condition, with intervals."""
    conditions = report.get("conditions", [])
    scores = [((c.get("metrics") or {}).get(label) or {}).get("judge") or {} for c in conditions]
    aspects = sorted({aspect for judged in scores for aspect in judged})
    groups = [BarGroup(aspect, [_bar(judged.get(aspect)) for judged in scores]) for aspect in aspects]
    return [str(c.get("name")) for c in conditions], groups


def judge_rows(report: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any] | None]]]:
    """The judge table: one row per label and aspect, one cell (an interval or None) per condition."""
    conditions = report.get("conditions", [])
    rows = []
    for label in report_labels(report):
        scores = [((c.get("metrics") or {}).get(label) or {}).get("judge") or {} for c in conditions]
        for aspect in sorted({aspect for judged in scores for aspect in judged}):
            rows.append((label, aspect, [judged.get(aspect) for judged in scores]))
    return rows
