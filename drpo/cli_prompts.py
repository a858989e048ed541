"""`drpo prompts ...`: inspect and change the artifact store.

Every command opens the store at ``DRPO_HOME/store`` directly; the store's writes are
transactional, so this is safe while ``drpo serve`` runs in another process (the proxy
picks up a new active version on its own).

Output is plain lines meant for people and for ``grep``/``awk``: ``list --versions``
prints the version id as the first token of each line. Errors are one line on stderr
with exit code 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import typer
from pydantic import ValidationError

from drpo.actor import cli_actor
from prompts.artifact import Artifact, Layout
from prompts.config import ConfigError, get_settings
from prompts.defaults import DEFAULT_MODEL_ID, default_artifact
from prompts.diff import artifact_diff
from prompts.errors import InvalidArtifact, PromptsError
from prompts.import_drpo import import_drpo_dir
from prompts.served import artifact_by_spec, served_artifact
from prompts.store import PromptStore, VersionInfo, open_store, parse_artifact, write_atomic

app = typer.Typer(help="Inspect and change stored prompt artifacts.", no_args_is_help=True)

ACTIVE_MARK = "(active)"
BUILTIN_MARK = "built-in default artifact"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _store() -> Iterator[PromptStore]:
    """The configured store; every expected failure becomes a one-line error, exit 1."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise _fail(f"invalid DRPO_* environment: {exc.errors()[0].get('msg', exc)}") from exc
    try:
        with open_store(settings, actor=cli_actor()) as store:
            yield store
    except (PromptsError, ConfigError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot use the store at {settings.store_dir}: {exc}") from exc


def _retrieval_text(artifact: Artifact) -> str:
    r = artifact.retrieval
    text = f"{r.method}, k={r.k}"
    labels = [e.label for e in artifact.examples if e.label]
    if labels:
        counts = {name: labels.count(name) for name in ("refusal", "helpful", "general") if name in labels}
        text += f", labelled ({', '.join(f'{n} {name}' for name, n in counts.items())}); "
        text += f"vote of {r.neighbours} neighbours, refusal share {r.refusal_share:g}, floor {r.min_similarity:g}"
    return text


def _short_time(iso: str) -> str:
    # 2024-05-01T12:34:56.789+00:00 -> 2024-05-01T12:34:56Z; unknown formats pass through.
    if len(iso) >= 19 and iso[10] == "T":
        return iso[:19] + ("Z" if iso.endswith(("+00:00", "Z")) else "")
    return iso or "-"


def _scores_text(scores: dict[str, float]) -> str:
    return ",".join(f"{name}={value:.2f}" for name, value in sorted(scores.items())) or "-"


def format_version_line(info: VersionInfo) -> str:
    """``VERSION  CREATED  METHOD  SCORES[  (active)]``: the version id is always first."""
    line = f"{info.version}  {_short_time(info.created_at)}  {info.method}  {_scores_text(info.scores)}"
    return f"{line}  {ACTIVE_MARK}" if info.active else line


def format_artifact(artifact: Artifact, active: bool | None = None) -> str:
    """A readable summary, then the system prompt and every example in full."""
    prov = artifact.provenance
    state = "" if active is None else (f" {ACTIVE_MARK}" if active else " (inactive)")
    lines = [
        f"model:       {artifact.model}",
        f"version:     {artifact.version}{state}",
        f"layout:      {artifact.layout}",
        f"retrieval:   {_retrieval_text(artifact)}",
        f"made by:     {prov.method}, created {_short_time(prov.created_at.isoformat())}",
        f"parent:      {prov.parent_version or '-'}",
        f"scores:      {_scores_text(dict(prov.scores))}",
        f"examples:    {len(artifact.examples)}",
        "",
        "--- system prompt ---",
        artifact.system_prompt,
    ]
    for number, example in enumerate(artifact.examples, 1):
        lines += ["", f"--- example {number} ---", f"Q: {example.query}", "A: " + example.answer]
    return "\n".join(lines)


@app.command("list")
def list_(
    model: str | None = typer.Argument(None, help="Only this model id."),
    versions: bool = typer.Option(False, "--versions", help="Every version of MODEL, one per line."),
) -> None:
    """Model ids with their active version, or (with --versions) every version of one model."""
    with _store() as store:
        if versions:
            if model is None:
                raise _fail("--versions needs a MODEL")
            infos = store.versions(model)
            if not infos:
                raise _fail(f"model {model!r} has no stored versions")
            for info in infos:
                typer.echo(format_version_line(info))
            return
        models = [model] if model is not None else store.models()
        if model is not None and model not in store.models():
            raise _fail(f"model {model!r} has no stored versions")
        if model is None:
            # What the proxy serves to every model id without an active version of its own.
            typer.echo(f"{DEFAULT_MODEL_ID}  {default_artifact().version}  {BUILTIN_MARK}")
        for name in models:
            line = f"{name}  {store.active_version(name) or '(none active: serves the built-in default)'}"
            weights = store.split(name)
            if weights:
                line += "  split " + " ".join(f"{v}={w}" for v, w in weights.items())
            typer.echo(line)


@app.command()
def show(
    model: str = typer.Argument(..., help="Model id."),
    version: str | None = typer.Option(None, "--version", "-v", help="Version id or unique prefix (default: active)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw artifact JSON."),
) -> None:
    """Show an artifact: summary, system prompt and examples."""
    with _store() as store:
        artifact, builtin = _served(store, model, version)
        active = store.active_version(model) == artifact.version
        reports = [] if builtin else store.eval_reports(model, artifact.version)
    if as_json:
        typer.echo(artifact.to_json().decode())
        return
    if builtin:
        typer.echo(f"{model} has no active version: the proxy serves it the {BUILTIN_MARK}\n")
    typer.echo(format_artifact(artifact, None if builtin else active))
    if reports:
        typer.echo("\nevals:")
        for report in reports:
            typer.echo("  " + format_eval_summary(report, artifact.version))


def format_eval_summary(report: dict[str, Any], version: str) -> str:
    """One line per stored eval report: when, on what, this version's refusal rates, the gate's verdict."""
    rates = ""
    for condition in report.get("conditions", []):
        if condition.get("version") == version:
            metrics = condition.get("metrics", {})
            rates = ", ".join(f"{label} {m['refusal']['value']:.0%}" for label, m in metrics.items())
            break
    line = f"{report['id']}  {_short_time(str(report.get('stored_at', '')))}  {','.join(report.get('sources', []))}"
    line += f"  refusal: {rates or '-'}"
    gate = report.get("gate")
    if gate:
        line += f"  gate: {'promoted' if gate.get('promote') else 'kept'} ({gate.get('reason', '')})"
    return line


@app.command()
def activate(
    model: str = typer.Argument(..., help="Model id."),
    version: str = typer.Argument(..., help="Version id or unique prefix."),
) -> None:
    """Make VERSION the one the proxy serves for MODEL."""
    with _store() as store:
        resolved = store.activate(model, version)
    typer.echo(f"{model}: active version {resolved}")


@app.command()
def rollback(model: str = typer.Argument(..., help="Model id.")) -> None:
    """Re-activate the version that was active before the current one."""
    with _store() as store:
        previous = store.active_version(model)
        target = store.rollback(model)
    typer.echo(f"{model}: rolled back from {previous} to {target}")


@app.command()
def export(
    model: str = typer.Argument(..., help="Model id."),
    file: Path = typer.Argument(..., help="Output JSON file ('-' for stdout).", dir_okay=False),
    version: str | None = typer.Option(None, "--version", "-v", help="Version id or prefix (default: active)."),
) -> None:
    """Write an artifact as JSON (atomically: never a half-written file)."""
    with _store() as store:
        artifact, builtin = _served(store, model, version)
    if builtin:
        typer.echo(f"{model} has no active version: exporting the {BUILTIN_MARK}", err=True)
    data = artifact.to_json() + b"\n"
    if str(file) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        write_atomic(file, data)
    except OSError as exc:
        raise _fail(f"cannot write {file}: {exc.strerror or exc}") from exc
    typer.echo(f"exported {model} {artifact.version} to {file}", err=True)


def _report_import(store: PromptStore, artifact: Artifact, activate: bool) -> None:
    is_new = not store.has_version(artifact.model, artifact.version)
    store.put(artifact, activate=activate)
    status = "new version" if is_new else "already stored"
    suffix = ", activated" if activate else ""
    typer.echo(f"{artifact.model} {artifact.version} ({status}{suffix})")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="Artifact JSON file (e.g. from `drpo prompts export`).", dir_okay=False),
    activate: bool = typer.Option(False, "--activate", help="Also make it the active version."),
) -> None:
    """Store an artifact file as a version of the model it names.

    The version id is recomputed from the content, so an edited export becomes a new version.
    """
    with _store() as store:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise InvalidArtifact(f"cannot read {file}: {exc.strerror or exc}") from exc
        artifact = parse_artifact(raw, str(file))
        _report_import(store, artifact, activate)


@app.command("import-drpo")
def import_drpo(
    directory: Path = typer.Argument(..., help="Directory with the reference's output.json."),
    model: str = typer.Option(..., "--model", "-m", help="Model id to store the artifact under."),
    icl: Path | None = typer.Option(
        None, "--icl", help="ICL_examples.json to use (default: DIR/ICL_examples.json if present)."
    ),
    layout: str = typer.Option("chat", "--layout", help="chat, or completion for base models."),
    activate: bool = typer.Option(False, "--activate", help="Also make it the active version."),
) -> None:
    """Import a prompt released by the reference DRPO implementation (last search level + examples)."""
    if layout not in ("chat", "completion"):
        raise _fail(f"--layout must be chat or completion, not {layout!r}")
    chosen: Layout = "completion" if layout == "completion" else "chat"
    with _store() as store:
        artifact = import_drpo_dir(directory, model, icl, chosen)
        if not artifact.examples:
            typer.echo("note: no ICL_examples.json found; the artifact has no examples (use --icl FILE)", err=True)
        _report_import(store, artifact, activate)


def _served(store: PromptStore, model: str, version: str | None) -> tuple[Artifact, bool]:
    """The artifact asked for, or with no version what the proxy serves MODEL; True if built-in."""
    return served_artifact(store, model) if version is None else (store.get(model, version), False)


@app.command()
def diff(
    model: str = typer.Argument(..., help="Model id."),
    first: str = typer.Argument(..., help="Version id or prefix, 'active' or 'default'."),
    second: str = typer.Argument(..., help="Version id or prefix, 'active' or 'default'."),
) -> None:
    """A unified diff of two versions: settings, system prompt and examples (exit 0 even if they differ)."""
    with _store() as store:
        a, b = artifact_by_spec(store, model, first)[0], artifact_by_spec(store, model, second)[0]
    typer.echo(artifact_diff(a, b) or f"{a.version} and {b.version} are identical")


@app.command()
def split(
    model: str = typer.Argument(..., help="Model id."),
    weights: list[str] = typer.Argument(None, help="VERSION=WEIGHT pairs, e.g. 3f2a=90 9c1b=10."),
    clear: bool = typer.Option(False, "--clear", help="Remove the split: the active version serves again."),
) -> None:
    """A/B split: serve MODEL from several versions by weight, sticky per request `user` / x-drpo-session."""
    if clear == bool(weights):
        raise _fail("give VERSION=WEIGHT pairs, or --clear")
    parsed: dict[str, int] = {}
    for pair in weights or []:
        version, _, weight = pair.partition("=")
        if not version or not weight.isdigit() or int(weight) <= 0:
            raise _fail(f"{pair!r} is not VERSION=WEIGHT with a positive whole weight")
        parsed[version] = int(weight)
    with _store() as store:
        if clear:
            store.clear_split(model)
            typer.echo(f"{model}: split cleared, serving {store.active_version(model) or 'the built-in default'}")
            return
        resolved = store.set_split(model, parsed)
    total = sum(resolved.values())
    typer.echo(f"{model}: split " + ", ".join(f"{v} {w / total:.0%}" for v, w in resolved.items()))


@app.command()
def audit(
    model: str | None = typer.Argument(None, help="Only changes of this model id."),
    limit: int = typer.Option(50, "--limit", min=1, help="The last N entries."),
) -> None:
    """Who changed what, when: imports, activations, rollbacks, promotions (oldest first)."""
    with _store() as store:
        entries = store.audit_log(model, limit)
    for entry in entries:
        when = _short_time(str(entry["at"]))
        typer.echo(f"{when}  {entry['actor']}  {entry['action']}  {entry['model']}  {entry.get('version') or '-'}")


@app.command("refresh-runs")
def refresh_runs(
    model: str | None = typer.Argument(None, help="Only this model id."),
    limit: int = typer.Option(20, "--limit", min=1, help="The newest N runs per model."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per line."),
) -> None:
    """Background refreshes (`drpo worker`), newest first: outcome, versions, calls, tokens, reason."""
    with _store() as store:
        models = [model] if model else store.refresh_models()
        runs = [run for m in models for run in store.refresh_runs(m, limit)]
    for run in runs:
        if as_json:
            typer.echo(orjson.dumps(run).decode())
            continue
        versions = f"{run.get('baseline') or 'default'} -> {run.get('candidate') or '?'}"
        spent = f"{run.get('calls', 0) or 0} calls, {run.get('tokens', 0) or 0} tokens"
        running = f"stage {run.get('stage')}" if run["outcome"] == "running" else ""
        why = run.get("reason") or run.get("error") or running
        when = _short_time(str(run["started_at"]))
        typer.echo(f"{when}  {run['model']}  {run['outcome']}  {versions}  {spent}  {why}")


@app.command()
def default(as_json: bool = typer.Option(False, "--json", help="Print the raw artifact JSON.")) -> None:
    """Print the built-in default artifact (served for model ids without their own)."""
    artifact = default_artifact()
    typer.echo(artifact.to_json().decode() if as_json else format_artifact(artifact))
