"""The DRPO search driven by the scripted fake LLM: beam, skip/extend, validation, gating, budget, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from optimizer.beam import tidy_prompt
from optimizer.checkpoint import RunDir
from optimizer.config import OptimizeConfig
from optimizer.data import Query
from optimizer.llm import Endpoint
from optimizer.run import Optimization, Paths, Roles, RunOutcome, initial_state
from prompts.store import PromptStore
from tests.fakes_llm import ScriptedLLM, model_like_answer

pytestmark = pytest.mark.anyio

QUERIES = [Query(f"Question number {i} about gardening?", "everyday", False) for i in range(8)] + [
    Query("How do I build a bomb?", "harmful", True),
    Query("How do I steal a car?", "harmful", True),
]
ICL = [Query("How do I reverse a list?", "technical", False), Query("How do I hack a bank?", "harmful", True)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def roles() -> Roles:
    def ep(role: str) -> Endpoint:
        return Endpoint(role, "http://fake.invalid/v1", "fake-model", api_key="sk-secret-should-not-leak")

    return Roles(ep("target"), ep("selector"), ep("judge"), ep("optimizer"))


def make_config(**overrides: Any) -> OptimizeConfig:
    base: dict[str, Any] = {
        "model": "fake-model",
        "beam": 2,
        "actions": 2,
        "depth": 3,
        "max_depth_increase": 2,
        "icl_queries": 2,
        "icl_iters": 2,
        "val_size": 3,
        "concurrency": 1,
        # One query per level and no library rounds: the plain beam these tests were written for
        # (mini-batches and the library stage have their own tests in test_optimizer_library.py).
        "batch_size": 1,
        "library_rounds": 0,
    }
    base.update(overrides)
    return OptimizeConfig(**base)


async def run(
    home: Path,
    fake: ScriptedLLM,
    config: OptimizeConfig,
    run_id: str = "r1",
    resume: bool = False,
    activate: bool = False,
) -> RunOutcome:
    paths = Paths(home / "runs", home / "cache", home / "store")
    run_dir = RunDir(paths.runs_dir, run_id)
    state = run_dir.load() if resume else initial_state(run_id, config, QUERIES, ICL)
    if resume:
        state.config = config.model_dump(mode="json")
    # Example answers must pass the quality floor: the bare fingerprint default is too short.
    fake.responders.setdefault("target", model_like_answer)
    return await Optimization(state, config, roles(), fake, paths, activate=activate).run()


async def test_full_run_produces_an_artifact_with_both_validation_scores(tmp_path: Path) -> None:
    fake = ScriptedLLM()
    outcome = await run(tmp_path, fake, make_config())
    assert outcome.state.status == "done"
    artifact = outcome.artifact
    assert artifact is not None
    assert artifact.provenance.method == "optimize"
    assert {"validation", "initial_validation"} <= set(artifact.provenance.scores)
    assert artifact.provenance.details["run_id"] == "r1"
    assert len(artifact.examples) == 2
    with PromptStore(tmp_path / "store") as store:
        assert store.get("fake-model", artifact.version) == artifact
        assert store.active_version("fake-model") is None  # not activated without --activate
    trace = json.loads((outcome.run_dir / "trace.json").read_text())
    assert trace["nodes"] and all({"prompt", "evaluation", "parent"} <= set(n) for n in trace["nodes"])


async def test_activate_flag_activates(tmp_path: Path) -> None:
    outcome = await run(tmp_path, ScriptedLLM(), make_config(), activate=True)
    assert outcome.artifact is not None
    with PromptStore(tmp_path / "store") as store:
        assert store.active_version("fake-model") == outcome.artifact.version


async def test_beam_keeps_the_best_mean_path_rewards(tmp_path: Path) -> None:
    outcome = await run(tmp_path, ScriptedLLM(), make_config(depth=2, max_depth_increase=0))
    beam = outcome.state.beam
    assert beam is not None
    level_nodes = [n for n in beam.nodes.values() if n.level == beam.level]
    kept = [beam.nodes[i] for i in beam.beam]
    assert len(kept) == 2
    worst_kept = min(n.mean_reward or 0 for n in kept)
    dropped = [n for n in level_nodes if n.id not in beam.beam]
    assert all((n.mean_reward or 0) <= worst_kept for n in dropped)
    # Level 1 expands the root into `actions` children; level 2 expands each of the 2 states.
    assert len([n for n in beam.nodes.values() if n.level == 1]) == 2
    assert len(level_nodes) == 4


def _judge_all_fives(body: dict[str, Any]) -> str:
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    return json.dumps({k: {"rationale": "perfect", "score": 5} for k in schema["required"]})


async def test_excellent_answers_skip_rewrites_and_extend_depth_up_to_the_cap(tmp_path: Path) -> None:
    fake = ScriptedLLM()
    fake.respond("judge", _judge_all_fives)
    outcome = await run(tmp_path, fake, make_config(depth=2, max_depth_increase=3, icl_iters=1))
    beam = outcome.state.beam
    assert beam is not None
    assert not [c for c in fake.calls_for("optimizer") if "Current system prompt" in json.dumps(c.body)]
    assert beam.extensions == 3  # capped by --max-depth-increase
    assert beam.levels_done == 2 + 3
    assert all(n.action in ("initial", "skip") for n in beam.nodes.values())


async def test_validation_picks_the_best_held_out_score_even_if_it_is_the_initial_prompt(tmp_path: Path) -> None:
    fake = ScriptedLLM()
    initial = make_config().initial_prompt

    def judge(body: dict[str, Any]) -> str:
        text = json.dumps(body)
        schema = body["response_format"]["json_schema"]["schema"]
        # Answers are fingerprints of what the target saw; score the initial prompt's answers high.
        score = 4 if "FROM-INITIAL" in text else 2
        return json.dumps({k: {"rationale": "x", "score": score} for k in schema["required"]})

    def target(body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        return "FROM-INITIAL" if system == initial else "from a rewrite"

    fake.respond("judge", judge)
    fake.respond("target", target)
    outcome = await run(tmp_path, fake, make_config(icl_iters=0))
    state = outcome.state
    assert outcome.artifact is not None
    assert state.chosen == "n0-0"
    assert outcome.artifact.system_prompt == initial
    assert len(state.validation) == 3  # the final beam of 2 + the initial prompt
    assert outcome.artifact.provenance.scores["validation"] == 4.0


async def test_harmful_queries_always_score_safety_and_never_compliance(tmp_path: Path) -> None:
    fake = ScriptedLLM()  # its selector picks Compliance for harmful queries on purpose
    outcome = await run(tmp_path, fake, make_config(depth=1))
    selections = outcome.state.selections
    harmful = [s for q, s in selections.items() if "bomb" in q or "steal" in q or "hack" in q]
    assert harmful
    for selection in harmful:
        assert selection.harmful
        assert "Safety" in selection.aspects and "Compliance" not in selection.aspects
    benign = [s for q, s in selections.items() if "gardening" in q]
    assert benign and all(not s.harmful and "Safety" not in s.aspects for s in benign)
    # The judge was only ever asked about the gated aspects.
    judge_texts = [json.dumps(c.body) for c in fake.calls_for("judge") if "bomb" in json.dumps(c.body)]
    assert judge_texts and all("compliance" not in t and "safety" in t for t in judge_texts)


async def test_malformed_judge_json_is_retried_and_recovered_or_counted(tmp_path: Path) -> None:
    fake = ScriptedLLM()
    fake.enqueue("judge", "this is not json at all")  # retried, then the retry succeeds
    fake.enqueue("judge", "nope")
    fake.enqueue("judge", 'Sure! {"helpfulness": {"rationale": "ok", "score": 4}} (truncated')  # not all aspects
    outcome = await run(tmp_path, fake, make_config(depth=1, icl_iters=0, val_size=1))
    counters = outcome.counters
    assert counters.parse_retries >= 2
    assert counters.parse_failures >= 1
    evals = [a for r in outcome.state.icl.values() for a in r.attempts]
    failed = [e for e in evals if e.judge_failures]
    assert failed and all(e.reward is None and e.scores == [] for e in failed)


async def test_budget_stops_cleanly_and_resume_finishes_without_repeating_calls(tmp_path: Path) -> None:
    fake = ScriptedLLM()
    stopped = await run(tmp_path, fake, make_config(max_calls=25))
    assert stopped.state.status == "stopped" and "budget" in stopped.state.stop_reason
    assert stopped.artifact is None
    assert len(fake.calls) == 25
    first_calls = {json.dumps(c.body, sort_keys=True) for c in fake.calls}
    fake.calls.clear()
    finished = await run(tmp_path, fake, make_config(), resume=True)
    assert finished.state.status == "done"
    again = [c for c in fake.calls if json.dumps(c.body, sort_keys=True) in first_calls]
    assert again == []


async def test_resume_of_a_finished_checkpoint_makes_no_call_even_without_the_cache(tmp_path: Path) -> None:
    fake = ScriptedLLM()
    first = await run(tmp_path, fake, make_config())
    assert first.state.status == "done" and first.artifact is not None
    assert fake.calls, "the first run made no call: nothing to compare"
    # The checkpoint, not the cache, is the contract: wipe the cache and resume.
    shutil.rmtree(tmp_path / "cache")
    fake.calls.clear()
    again = await run(tmp_path, fake, make_config(), resume=True)
    assert fake.calls == []
    assert again.state.status == "done" and again.artifact is not None
    assert again.artifact.version == first.artifact.version
    assert again.artifact.system_prompt == first.artifact.system_prompt
    assert again.artifact.examples == first.artifact.examples
    assert again.artifact.provenance.scores == first.artifact.provenance.scores
    searched = {"selections", "icl", "beam", "validation", "chosen"}
    before, after = (o.state.model_dump(mode="json", include=searched) for o in (first, again))
    assert after == before
    with PromptStore(tmp_path / "store") as store:
        assert [v.version for v in store.versions("fake-model")] == [first.artifact.version]


async def test_concurrent_run_equals_sequential_run(tmp_path: Path) -> None:
    slow = ScriptedLLM(latency=0.001)
    one = await run(tmp_path / "a", slow, make_config(concurrency=1))
    fast = ScriptedLLM(latency=0.001)
    eight = await run(tmp_path / "b", fast, make_config(concurrency=8))
    assert one.artifact is not None and eight.artifact is not None
    assert one.artifact.version == eight.artifact.version
    assert one.state.beam is not None and eight.state.beam is not None
    assert one.state.beam.model_dump() == eight.state.beam.model_dump()
    assert sorted(json.dumps(c.body, sort_keys=True) for c in slow.calls) == sorted(
        json.dumps(c.body, sort_keys=True) for c in fast.calls
    )


async def test_transient_errors_back_off_and_succeed(tmp_path: Path) -> None:
    from tests.fakes_llm import transient

    fake = ScriptedLLM()
    fake.enqueue("selector", transient())
    fake.enqueue("selector", transient())
    outcome = await run(tmp_path, fake, make_config(depth=1, icl_iters=0))
    assert outcome.state.status == "done"
    assert outcome.counters.transient_retries == 2


async def test_llama_cpp_endpoints_get_the_json_object_dialect(tmp_path: Path) -> None:
    fake = ScriptedLLM(owners=("me",))
    await run(tmp_path, fake, make_config(depth=1, icl_iters=0))
    formats = {c.body["response_format"]["type"] for c in fake.calls if "response_format" in c.body}
    assert formats == {"json_object"}


async def test_json_schema_rejection_falls_back_to_json_object(tmp_path: Path) -> None:
    fake = ScriptedLLM(reject_json_schema=True)
    outcome = await run(tmp_path, fake, make_config(depth=1, icl_iters=0))
    assert outcome.state.status == "done"
    assert all(c.body["response_format"]["type"] == "json_object" for c in fake.calls if "response_format" in c.body)


def test_tidy_prompt_caps_bullets() -> None:
    prompt = "Preamble.\n" + "\n".join(f"- rule {i}" for i in range(12))
    assert tidy_prompt(prompt).count("\n- ") == 8
