"""eval.runner in-process: the scripted expert through every method, streaming, resuming, and run settings.

The expert (``data_prep.expert_policy``) plays the tiny world's test questions through the real environment
(BM25, the episode driver, a RolloutRunner per dataset x method), so the harness sees real searches, real
passages and real answers, and its numbers can be checked against what the expert is known to do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent_env.assembly import EnvSetupError, EnvSpec
from agent_env.episode import AgentEnv, EpisodeConfig
from agent_env.scripted import ScriptedPolicy
from agent_env.search import LocalSearch
from agent_env.squeezers import NoSqueezer
from data_prep.expert_policy import ExpertResponder
from data_prep.synthetic import World, WorldLexicon
from eval.datasets import DatasetSpec, EvalDataset
from eval.methods import METHODS
from eval.records import TIMING_KEYS
from eval.runner import evaluate, greedy_records, model_identity, retriever_identity, run_settings
from retriever_server.bm25 import BM25Index

QUESTIONS = 12


class FailingOn:
    """The expert's turns, except that it raises on one question (a broken engine mid-run)."""

    def __init__(self, responder: ExpertResponder, question: str) -> None:
        self.responder = responder
        self.question = question

    def __call__(self, context: str) -> str:
        if f"Question: {self.question}\n" in context:
            raise RuntimeError("engine died")
        return self.responder(context)


def world_dataset(world: World, count: int = QUESTIONS) -> EvalDataset:
    return EvalDataset(DatasetSpec("world", Path("/world/test.jsonl")), tuple(world.questions["test"][:count]))


def play(
    world: World,
    tokenizer: Any,
    index: BM25Index,
    dataset: EvalDataset,
    out_dir: Path,
    methods: Sequence[str] = tuple(METHODS),
    fail_on: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, dict[str, dict[str, float]]]:
    responder = ExpertResponder(world.questions["test"], WorldLexicon.of(world))
    respond = FailingOn(responder, fail_on) if fail_on else responder

    async def run() -> dict[str, dict[str, dict[str, float]]]:
        search = LocalSearch(index)
        env = AgentEnv(ScriptedPolicy(tokenizer, respond), tokenizer, search, NoSqueezer(), EpisodeConfig())
        try:
            return await evaluate(env, [dataset], methods, out_dir, concurrency=4, log=log)
        finally:
            await search.aclose()

    return asyncio.run(run())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stable(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key not in ("seconds", "played")}


@pytest.fixture(scope="module")
def full_run(
    tiny_world: World, policy_tokenizer: Any, world_bm25: BM25Index, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict[str, dict[str, float]]]]:
    out = tmp_path_factory.mktemp("eval_full")
    return out, play(tiny_world, policy_tokenizer, world_bm25, world_dataset(tiny_world), out)


def test_every_method_is_scored_from_real_episodes(full_run: tuple[Path, Any]) -> None:
    _, results = full_run
    metrics = results["world"]
    assert list(metrics) == list(METHODS)
    assert all(method["n"] == QUESTIONS and method["played"] == QUESTIONS for method in metrics.values())
    expandsearch = metrics["expandsearch"]
    assert expandsearch["em"] > 0.3, "the expert answers most tiny-world questions with three variants"
    assert 0 < expandsearch["recall"] <= 1
    assert 0 < expandsearch["answer_in_passages"] <= 1  # below EM where golds are yes/no, which no passage holds
    assert 1 < expandsearch["variants_per_search"] <= 3
    assert metrics["search_r1"]["variants_per_search"] == 1
    # the expert always searches first, so a one-turn method never gets its answer
    assert metrics["direct"]["em"] == metrics["rag"]["em"] == 0.0
    assert "answer_in_passages" not in metrics["direct"]
    assert "recall" not in metrics["direct"]
    assert metrics["rag"]["searches"] == 1.0
    assert metrics["rag"]["turns"] == metrics["direct"]["turns"] == 1.0


def test_records_are_streamed_per_example_with_metrics_and_trace(full_run: tuple[Path, Any], tiny_world: World) -> None:
    out, _ = full_run
    records = lines(out / "world" / "expandsearch.jsonl")
    assert sorted(record["id"] for record in records) == sorted(e.id for e in tiny_world.questions["test"][:QUESTIONS])
    record = records[0]
    for key in ("question", "golds", "prediction", "em", "f1", "cover_em", "answer_in_passages", "recall"):
        assert key in record
    for key in ("turns", "searches", "variants", "tokens", "context_tokens", "termination"):
        assert key in record
    searches = [turn for turn in record["trace"] if turn["action"] == "search"]
    assert len(searches) == record["searches"]
    assert sum(len(turn["queries"]) for turn in searches) == record["variants"]
    # ids, titles and scores, not texts: the index holds those
    assert all(set(hit) == {"id", "title", "score"} for turn in searches for hits in turn["hits"] for hit in hits)
    assert record["type"] == next(e for e in tiny_world.questions["test"] if e.id == record["id"]).metadata["type"]
    rag = lines(out / "world" / "rag.jsonl")[0]
    assert rag["trace"][0]["action"] == "retrieve"
    assert rag["trace"][0]["queries"] == [rag["question"]]


def test_the_trainers_evaluator_plays_what_expandsearch_eval_plays(
    full_run: tuple[Path, Any], tiny_world: World, policy_tokenizer: Any, world_bm25: BM25Index
) -> None:
    """One greedy evaluator: ``greedy_records`` with the run's own settings (what the trainer, the warm starts and
    the main job's final rows use) writes the same rows as ``expandsearch eval``'s method with those settings."""
    out, _ = full_run
    responder = ExpertResponder(tiny_world.questions["test"], WorldLexicon.of(tiny_world))
    examples = world_dataset(tiny_world).examples

    async def run() -> list[dict[str, Any]]:
        search = LocalSearch(world_bm25)
        config = EpisodeConfig(template="expandsearch")  # the settings METHODS["expandsearch"] plays with
        env = AgentEnv(ScriptedPolicy(policy_tokenizer, responder), policy_tokenizer, search, NoSqueezer(), config)
        try:
            return await greedy_records(env, examples, concurrency=3)
        finally:
            await search.aclose()

    rows = asyncio.run(run())
    assert [row["id"] for row in rows] == [example.id for example in examples]  # in the examples' order
    by_eval = {record["id"]: record for record in lines(out / "world" / "expandsearch.jsonl")}
    assert {row["id"]: without_timings(row) for row in rows} == {key: without_timings(r) for key, r in by_eval.items()}


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    """A record less its turns' seconds, which measure the machine, not the episode."""
    trace = [{key: value for key, value in turn.items() if key not in TIMING_KEYS} for turn in record["trace"]]
    return {**record, "trace": trace}


def test_a_rerun_plays_nothing_and_reports_the_same(
    full_run: tuple[Path, Any], tiny_world: World, policy_tokenizer: Any, world_bm25: BM25Index
) -> None:
    out, first = full_run
    logged: list[str] = []
    again = play(tiny_world, policy_tokenizer, world_bm25, world_dataset(tiny_world), out, log=logged.append)
    assert f"world / rag: 0 to play, {QUESTIONS} already in {out / 'world' / 'rag.jsonl'}" in logged
    for method in METHODS:
        assert again["world"][method]["played"] == 0
        assert stable(again["world"][method]) == stable(first["world"][method])
    assert len(lines(out / "world" / "rag.jsonl")) == QUESTIONS


def test_a_larger_limit_plays_only_the_new_questions(
    full_run: tuple[Path, Any], tiny_world: World, policy_tokenizer: Any, world_bm25: BM25Index, tmp_path: Path
) -> None:
    _, whole = full_run
    small = play(tiny_world, policy_tokenizer, world_bm25, world_dataset(tiny_world, 5), tmp_path, ["expandsearch"])
    assert small["world"]["expandsearch"]["n"] == 5
    before = (tmp_path / "world" / "expandsearch.jsonl").read_text()
    grown = play(tiny_world, policy_tokenizer, world_bm25, world_dataset(tiny_world), tmp_path, ["expandsearch"])
    assert grown["world"]["expandsearch"]["played"] == QUESTIONS - 5
    assert (tmp_path / "world" / "expandsearch.jsonl").read_text().startswith(before), "earlier lines kept as written"
    assert stable(grown["world"]["expandsearch"]) == stable(whole["world"]["expandsearch"])


def test_a_run_that_dies_keeps_finished_examples_and_the_rerun_completes_it(
    full_run: tuple[Path, Any], tiny_world: World, policy_tokenizer: Any, world_bm25: BM25Index, tmp_path: Path
) -> None:
    _, whole = full_run
    dataset = world_dataset(tiny_world)
    doomed = dataset.examples[7].question
    with pytest.raises(RuntimeError, match="engine died"):
        play(tiny_world, policy_tokenizer, world_bm25, dataset, tmp_path, ["expandsearch"], fail_on=doomed)
    path = tmp_path / "world" / "expandsearch.jsonl"
    kept = lines(path)
    assert 0 < len(kept) < QUESTIONS
    assert doomed not in {record["question"] for record in kept}
    with path.open("a") as handle:  # and a record cut short, as a kill mid-write leaves it
        handle.write('{"id": "test-9", "question": "In wh')
    resumed = play(tiny_world, policy_tokenizer, world_bm25, dataset, tmp_path, ["expandsearch"])
    assert resumed["world"]["expandsearch"]["played"] == QUESTIONS - len(kept)
    assert len(lines(path)) == QUESTIONS
    assert stable(resumed["world"]["expandsearch"]) == stable(whole["world"]["expandsearch"])


def test_run_settings_name_model_index_squeezer_episode_and_files(tiny_policy_dir: Path, tmp_path: Path) -> None:
    from retriever_server.corpus import Passage, write_wiki18_jsonl
    from retriever_server.index_dir import build_index

    write_wiki18_jsonl([Passage("1", "Xol", "Xol was founded by Kalmar.")], tmp_path / "corpus.jsonl")
    build_index(tmp_path / "corpus.jsonl", "bm25", tmp_path / "index", progress=False)
    spec = EnvSpec(model=str(tiny_policy_dir), index_dir=str(tmp_path / "index"), squeezer="none")
    (tmp_path / "nq.jsonl").write_text('{"id": "nq-1"}\n')
    settings = run_settings(spec, [EvalDataset(DatasetSpec("nq", tmp_path / "nq.jsonl"), ())])
    assert settings["model"]["path"] == str(tiny_policy_dir.resolve())
    assert settings["retriever"]["kind"] == "bm25"
    assert settings["retriever"]["passages"] == 1
    assert settings["squeezer"] == "none"
    assert "template" not in settings["episode"]
    assert settings["episode"]["topk"] == 3
    nq_sha256 = hashlib.sha256(b'{"id": "nq-1"}\n').hexdigest()
    assert settings["datasets"] == {"nq": {"file": str(tmp_path / "nq.jsonl"), "sha256": nq_sha256}}
    url_spec = EnvSpec(model=str(tiny_policy_dir), retriever_url="http://127.0.0.1:9")
    assert retriever_identity(url_spec) == {"url": "http://127.0.0.1:9"}


def test_a_model_changed_in_place_gets_another_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    before = model_identity(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"123456")
    assert model_identity(str(tmp_path))["files"] != before["files"]
    with pytest.raises(FileNotFoundError, match="no model at"):
        model_identity(str(tmp_path / "missing"))


def test_a_missing_index_fails_before_anything_loads(tiny_policy_dir: Path, tmp_path: Path) -> None:
    spec = EnvSpec(model=str(tiny_policy_dir), index_dir=str(tmp_path / "nothing"))
    with pytest.raises(EnvSetupError, match="cannot load index"):
        retriever_identity(spec)


def test_an_untagged_policy_scores_zero_em_and_its_last_turn_is_scored_apart(
    tiny_world: World, policy_tokenizer: Any, world_bm25: BM25Index, tmp_path: Path
) -> None:
    dataset = world_dataset(tiny_world, 4)
    golds = {example.question: example.golden_answers[0] for example in dataset.examples}

    def untagged(context: str) -> str:  # knows every answer, never writes the tags
        question = next(question for question in golds if f"Question: {question}\n" in context)
        return f"Question: {question}\nAnswer: {golds[question]}. That is all."

    async def run() -> dict[str, dict[str, dict[str, float]]]:
        search = LocalSearch(world_bm25)
        env = AgentEnv(ScriptedPolicy(policy_tokenizer, untagged), policy_tokenizer, search, NoSqueezer())
        try:
            return await evaluate(env, [dataset], ["direct", "search_r1"], tmp_path, answer_fallback="last-turn")
        finally:
            await search.aclose()

    results = asyncio.run(run())["world"]
    for method in ("direct", "search_r1"):
        assert (results[method]["em"], results[method]["answered"]) == (0.0, 0.0)
        assert results[method]["fallback_em"] == results[method]["fallback_used"] == 1.0
    record = lines(tmp_path / "world" / "direct.jsonl")[0]
    assert record["prediction"] is None
    assert record["fallback_prediction"] == f"{golds[record['question']]}."


def test_run_settings_record_the_answer_fallback(tiny_policy_dir: Path, tmp_path: Path) -> None:
    spec = EnvSpec(model=str(tiny_policy_dir), retriever_url="http://127.0.0.1:9", squeezer="none")
    assert run_settings(spec, [])["answer_fallback"] == "none"
    assert run_settings(spec, [], "last-turn")["answer_fallback"] == "last-turn"
