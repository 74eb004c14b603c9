"""Tests for agent_env.rollout: many concurrent episodes with the tiny random-weight Qwen2 and with a searching
script, both against a real retriever server; order and grouping, micro-batching, no cross-talk between
episodes, failure propagation, the summary and EpisodeInput."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from support import CountingBM25

from agent_env.engine import Generation, SamplingParams, TransformersEngine
from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory
from agent_env.protocol import render_observation, render_passages
from agent_env.retrieval import merge_variant_hits
from agent_env.rollout import EpisodeInput, RolloutRunner, summarize_rollouts
from agent_env.scripted import ScriptedPolicy
from agent_env.search import HttpSearch, LocalSearch
from agent_env.squeezers import NoSqueezer
from data_prep.synthetic import World

from .conftest import assistant_text, question_of, run_texts, script

TERMINATIONS = ("answer", "max_turns", "response_budget", "context_full")


def inputs_of(world: World, count: int, split: str = "train") -> list[EpisodeInput]:
    examples = world.questions[split][:count]
    return [EpisodeInput(e.question, tuple(e.golden_answers), e.id) for e in examples]


def server_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/info", timeout=10).json()["stats"])


async def rollout(env: AgentEnv, inputs: Sequence[EpisodeInput], **options: Any) -> list[Trajectory]:
    try:
        return await RolloutRunner(env, **options.pop("runner", {})).run(inputs, **options)
    finally:
        await env.search.aclose()


# ---------------------------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def model_rollout(
    tiny_engine: TransformersEngine, policy_tokenizer: Any, world_server: str, tiny_world: World
) -> tuple[list[EpisodeInput], list[Trajectory], list[int]]:
    """64 episodes (32 questions x 2 samples) of the random-weight policy, searching through the real server."""
    inputs = inputs_of(tiny_world, 32)
    config = EpisodeConfig(max_turns=3, max_turn_tokens=24)
    env = AgentEnv(tiny_engine, policy_tokenizer, HttpSearch.from_url(world_server), NoSqueezer(), config)
    seen = len(tiny_engine.batch_stats.batch_sizes)
    trajectories = asyncio.run(rollout(env, inputs, samples_per_input=2))
    return inputs, trajectories, tiny_engine.batch_stats.batch_sizes[seen:]


def test_model_rollout_completes_every_episode_in_input_order(
    model_rollout: tuple[list[EpisodeInput], list[Trajectory], list[int]],
) -> None:
    inputs, trajectories, _ = model_rollout
    assert len(trajectories) == 64
    for position, trajectory in enumerate(trajectories):
        item = inputs[position // 2]  # the samples of one input are together, as GRPO groups them
        assert (trajectory.example_id, trajectory.question) == (item.example_id, item.question)
        assert trajectory.golden_answers == list(item.golden_answers)
        assert trajectory.termination in TERMINATIONS
        assert 1 <= trajectory.num_turns <= 3
        assert len(trajectory.response_ids) == len(trajectory.response_mask) == len(trajectory.response_logprobs)
    pairs = list(zip(trajectories[0::2], trajectories[1::2], strict=True))
    assert sum(first.response_ids != second.response_ids for first, second in pairs) > len(pairs) // 2  # sampled


def test_model_rollout_generation_was_micro_batched(
    model_rollout: tuple[list[EpisodeInput], list[Trajectory], list[int]],
) -> None:
    _, trajectories, batch_sizes = model_rollout
    assert sum(batch_sizes) == sum(trajectory.num_turns for trajectory in trajectories)
    assert max(batch_sizes) > 1
    assert len(batch_sizes) < sum(batch_sizes) / 8


def test_seeded_rollout_is_the_same_whatever_the_concurrency(
    tiny_engine: TransformersEngine, policy_tokenizer: Any, world_index: Any, tiny_world: World
) -> None:
    inputs = inputs_of(tiny_world, 6)
    config = EpisodeConfig(max_turns=2, max_turn_tokens=16)

    def play(concurrency: int, seed: int) -> list[list[int]]:
        env = AgentEnv(tiny_engine, policy_tokenizer, LocalSearch(world_index), NoSqueezer(), config)
        runner = {"max_concurrency": concurrency}
        trajectories = asyncio.run(rollout(env, inputs, samples_per_input=2, seed=seed, runner=runner))
        return [trajectory.response_ids for trajectory in trajectories]

    batched = play(12, seed=5)
    assert play(1, seed=5) == batched
    assert play(12, seed=6) != batched
    assert batched[0] != batched[1]  # the samples of one question differ


def test_model_rollout_summary(model_rollout: tuple[list[EpisodeInput], list[Trajectory], list[int]]) -> None:
    _, trajectories, _ = model_rollout
    summary = summarize_rollouts(trajectories)
    metric_keys = {f"rollout/{key}" for key in trajectories[0].metrics}
    ended = {f"rollout/ended_{termination}" for termination in TERMINATIONS}
    assert set(summary) == {"rollout/episodes", "rollout/reward_mean"} | metric_keys | ended
    assert summary["rollout/episodes"] == 64
    assert sum(summary[key] for key in ended) == pytest.approx(1.0)
    assert summary["rollout/turns"] == pytest.approx(sum(t.num_turns for t in trajectories) / 64)
    assert summary["rollout/reward_mean"] == pytest.approx(sum(t.reward for t in trajectories) / 64)
    assert 0.0 <= summary["rollout/valid_action_rate"] <= 1.0
    assert summary["rollout/policy_tokens"] > 0


# ---------------------------------------------------------------------------------------------- a searching script


def searching_respond(golds: dict[str, str]) -> Any:
    """Turn 1 searches the episode's own question (and its last two words); turn 2 answers from ``golds``."""

    def respond(context: str) -> str:
        question = question_of(context)
        if "</information>" not in assistant_text(context):
            return f"<search> {question} ## {' '.join(question.rstrip('?').split()[-2:])} </search>"
        return f"<answer> {golds.get(question, 'unknown')} </answer>"

    return respond


@pytest.fixture(scope="module")
def scripted_rollout(
    policy_tokenizer: Any, world_server: str, world_index: CountingBM25, tiny_world: World
) -> tuple[list[EpisodeInput], list[Trajectory], dict[str, int], int]:
    """96 episodes of a script that searches with variants of its question through the real server."""
    inputs = inputs_of(tiny_world, 96)
    golds = {item.question: item.golden_answers[0] for item in inputs[::2]}
    policy = ScriptedPolicy(policy_tokenizer, searching_respond(golds))
    env = AgentEnv(policy, policy_tokenizer, HttpSearch.from_url(world_server), NoSqueezer(), EpisodeConfig())
    before, calls = server_stats(world_server), world_index.calls
    trajectories = asyncio.run(rollout(env, inputs))
    after = server_stats(world_server)
    return inputs, trajectories, {key: after[key] - before[key] for key in after}, world_index.calls - calls


def test_scripted_rollout_retrieval_is_batched(
    scripted_rollout: tuple[list[EpisodeInput], list[Trajectory], dict[str, int], int],
) -> None:
    inputs, trajectories, served, index_calls = scripted_rollout
    assert all(trajectory.metrics["searches"] == 1 for trajectory in trajectories)
    assert served["queries"] == sum(len(trajectory.turns[0].queries) for trajectory in trajectories)
    assert served["requests"] <= len(inputs) // 8
    assert index_calls <= len(inputs) // 8


def test_scripted_rollout_episodes_get_their_own_passages(
    policy_tokenizer: Any,
    world_index: CountingBM25,
    scripted_rollout: tuple[list[EpisodeInput], list[Trajectory], dict[str, int], int],
) -> None:
    inputs, trajectories, _, _ = scripted_rollout
    first_hits = set()
    for item, trajectory in zip(inputs, trajectories, strict=True):
        record = trajectory.turns[0]
        assert record.queries[0] == item.question
        direct = world_index.batch_search(record.queries, 3)
        assert [[hit["id"] for hit in hits] for hits in record.hits_per_query] == [[h.id for h in d] for d in direct]
        assert record.observation == render_passages(merge_variant_hits(direct))
        inserted = run_texts(policy_tokenizer, trajectory.response_ids, trajectory.response_mask, 0)
        assert inserted == [render_observation(record.observation)]
        first_hits.add(direct[0][0].id)
    assert len(first_hits) > 30  # the episodes searched different things, so mixing them up would show


def test_scripted_rollout_rewards(
    scripted_rollout: tuple[list[EpisodeInput], list[Trajectory], dict[str, int], int],
) -> None:
    inputs, trajectories, _, _ = scripted_rollout
    assert [trajectory.reward for trajectory in trajectories] == [1.0, 0.0] * (len(inputs) // 2)
    summary = summarize_rollouts(trajectories)
    assert summary["rollout/reward_mean"] == 0.5
    assert summary["rollout/ended_answer"] == 1.0
    assert summary["rollout/variants_per_search"] == 2.0


# ---------------------------------------------------------------------------------------------- runner behaviour


class FailingEngine:
    """Raises for one question; every other episode waits until it is cancelled (and counts that)."""

    max_context_tokens = None

    def __init__(self, tokenizer: Any, poison: str) -> None:
        self.tokenizer = tokenizer
        self.poison = poison
        self.cancelled = 0

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        if self.poison in self.tokenizer.decode(list(prompt_ids)):
            await asyncio.sleep(0.01)  # the others are waiting by now
            raise RuntimeError("engine crashed on this prompt")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


def test_exception_in_one_episode_propagates_and_cancels_the_rest(
    policy_tokenizer: Any, world_index: CountingBM25, tiny_world: World
) -> None:
    inputs = inputs_of(tiny_world, 8)
    engine = FailingEngine(policy_tokenizer, inputs[5].question)
    env = AgentEnv(engine, policy_tokenizer, LocalSearch(world_index), NoSqueezer())

    async def scenario() -> int:
        with pytest.raises(RuntimeError, match="engine crashed"):
            await asyncio.wait_for(rollout(env, inputs), timeout=30)
        return engine.cancelled  # read before asyncio.run's own clean-up could cancel anything

    assert asyncio.run(scenario()) == 7


class CountingPolicy(ScriptedPolicy):
    """A script that answers at once, recording how many episodes are generating at the same time."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, lambda context: "<answer> unknown </answer>")
        self.active = 0
        self.peak = 0

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.005)
            return await super().generate(prompt_ids, sampling)
        finally:
            self.active -= 1


def test_max_concurrency_bounds_episodes_in_flight(
    policy_tokenizer: Any, world_index: CountingBM25, tiny_world: World
) -> None:
    policy = CountingPolicy(policy_tokenizer)
    env = AgentEnv(policy, policy_tokenizer, LocalSearch(world_index), NoSqueezer())
    trajectories = asyncio.run(
        rollout(env, inputs_of(tiny_world, 20), samples_per_input=2, runner={"max_concurrency": 4})
    )
    assert len(trajectories) == 40
    assert policy.peak == 4


def test_run_rejects_bad_arguments(policy_tokenizer: Any, world_index: CountingBM25) -> None:
    env = AgentEnv(
        script(policy_tokenizer, ["<answer> x </answer>"]), policy_tokenizer, LocalSearch(world_index), NoSqueezer()
    )
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        RolloutRunner(env, max_concurrency=0)
    with pytest.raises(ValueError, match="samples_per_input must be >= 1"):
        asyncio.run(RolloutRunner(env).run([EpisodeInput("q")], samples_per_input=0))


def test_summary_of_no_trajectories_is_empty() -> None:
    assert summarize_rollouts([]) == {}


def test_per_search_averages_skip_episodes_that_did_not_search(
    policy_tokenizer: Any, world_index: CountingBM25, tiny_world: World
) -> None:
    def respond(context: str) -> str:
        searched = "</information>" in assistant_text(context)
        if searched or question_of(context).startswith("Who"):
            return "<answer> unknown </answer>"
        return "<search> a first variant ## a second variant ## a third one </search>"

    env = AgentEnv(ScriptedPolicy(policy_tokenizer, respond), policy_tokenizer, LocalSearch(world_index), NoSqueezer())
    trajectories = asyncio.run(rollout(env, inputs_of(tiny_world, 20)))
    searched = [trajectory.metrics["searches"] for trajectory in trajectories]
    assert 0 < sum(searched) < len(searched)
    summary = summarize_rollouts(trajectories)
    assert summary["rollout/variants_per_search"] == 3.0
    assert summary["rollout/searches"] == pytest.approx(sum(searched) / len(searched))


# ---------------------------------------------------------------------------------------------- EpisodeInput


def test_episode_input_from_flashrag_record() -> None:
    record = {"id": 7, "question": "Who employs F. Tamrail?", "golden_answers": ["Haive Labs", "Haive"], "x": 1}
    assert EpisodeInput.from_mapping(record) == EpisodeInput("Who employs F. Tamrail?", ("Haive Labs", "Haive"), "7")


def test_episode_input_defaults_without_golds_or_id() -> None:
    assert EpisodeInput.from_mapping({"question": "q"}) == EpisodeInput("q", (), None)
    assert EpisodeInput.from_mapping({"question": "q", "golden_answers": None, "id": None}) == EpisodeInput("q")


def test_episode_input_reads_a_bare_string_as_one_gold() -> None:
    assert EpisodeInput.from_mapping({"question": "q", "golden_answers": "Paris"}).golden_answers == ("Paris",)


def test_episode_input_reads_numpy_golds_from_parquet() -> None:
    record = {"question": "q", "golden_answers": np.array(["Haive Labs", "Haive"], dtype=object), "id": "a"}
    assert EpisodeInput.from_mapping(record).golden_answers == ("Haive Labs", "Haive")
    assert EpisodeInput.from_mapping({"question": "q", "golden_answers": np.array([])}).golden_answers == ()


def test_episode_input_needs_a_question() -> None:
    with pytest.raises(KeyError, match="question"):
        EpisodeInput.from_mapping({"golden_answers": ["x"]})
