"""The scripted expert played through the real environment: exact tokens and masks, the same answers as
``run_expert``, and safe when many episodes (several samples of one question included) run at once."""

from __future__ import annotations

import asyncio
from statistics import fmean
from typing import Any

import pytest

from agent_env.episode import FINAL_TURN_NOTICE, AgentEnv, EpisodeConfig, Trajectory, run_episode
from agent_env.rollout import EpisodeInput, RolloutRunner
from agent_env.search import LocalSearch
from agent_env.squeezers import NoSqueezer
from agent_env.tiny_model import train_tokenizer
from data_prep.expert import run_expert
from data_prep.expert_policy import UnknownQuestionError, expert_policy, split_context
from data_prep.formats import QAExample
from data_prep.synthetic import World, WorldLexicon
from data_prep.tokenizer_corpus import tokenizer_corpus
from retriever_server.bm25 import BM25Index


@pytest.fixture(scope="module")
def lexicon(tiny_world: World) -> WorldLexicon:
    return WorldLexicon.of(tiny_world)


@pytest.fixture(scope="module")
def index(tiny_world: World) -> BM25Index:
    return BM25Index.build(tiny_world.passages)


@pytest.fixture(scope="module")
def tokenizer(tiny_world: World) -> Any:
    return train_tokenizer(tokenizer_corpus(tiny_world.passages, tiny_world.questions["train"][:100]), 2048)


@pytest.fixture(scope="module")
def test_questions(tiny_world: World) -> list[QAExample]:
    return tiny_world.questions["test"][:60]


def play(
    tokenizer: Any,
    index: BM25Index,
    lexicon: WorldLexicon,
    examples: list[QAExample],
    *,
    samples: int = 1,
    config: EpisodeConfig | None = None,
    count_facts: bool = False,
) -> list[Trajectory]:
    async def go() -> list[Trajectory]:
        search = LocalSearch(index)
        engine = expert_policy(tokenizer, examples, lexicon, count_facts=count_facts)
        env = AgentEnv(engine, tokenizer, search, NoSqueezer(), config or EpisodeConfig())
        inputs = [EpisodeInput(example.question, tuple(example.golden_answers), example.id) for example in examples]
        try:
            return await RolloutRunner(env, max_concurrency=512).run(inputs, samples_per_input=samples)
        finally:
            await search.aclose()

    return asyncio.run(go())


def test_trajectories_hold_the_expert_turns_as_policy_tokens_and_observations_as_environment_tokens(
    tokenizer: Any, index: BM25Index, lexicon: WorldLexicon, test_questions: list[QAExample]
) -> None:
    for trajectory in play(tokenizer, index, lexicon, test_questions[:20]):
        ids, mask = trajectory.response_ids, trajectory.response_mask
        assert len(ids) == len(mask) == len(trajectory.response_logprobs)
        policy_text = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m == 1])
        environment_text = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m == 0])
        assert policy_text == "".join(turn.policy_text for turn in trajectory.turns)
        assert "<information>" not in policy_text
        assert "Doc 1" not in policy_text
        # the final-turn notice names <answer>; the observations never write an action
        assert "<search>" not in environment_text
        assert "<answer>" not in environment_text.replace(FINAL_TURN_NOTICE, "")
        if trajectory.num_turns > 1:
            assert "<information>Doc 1 (Title:" in environment_text
        assert trajectory.termination == "answer"
        assert all(logprob == 0.0 for logprob in trajectory.response_logprobs)


def test_exact_match_through_the_environment_matches_run_expert(
    tokenizer: Any, index: BM25Index, lexicon: WorldLexicon, test_questions: list[QAExample]
) -> None:
    reference = run_expert(test_questions, index, lexicon, max_variants=3, topk=3, max_turns=4)
    trajectories = play(tokenizer, index, lexicon, test_questions)
    reference_em = fmean(result.exact_match for result in reference)
    env_em = fmean(trajectory.reward for trajectory in trajectories)
    assert reference_em > 0.7
    assert abs(env_em - reference_em) <= 0.05, (env_em, reference_em)
    same = sum(result.answer == trajectory.answer for result, trajectory in zip(reference, trajectories, strict=True))
    assert same >= 0.9 * len(test_questions)


def test_counting_facts_changes_the_thinking_not_the_actions(
    tokenizer: Any, index: BM25Index, lexicon: WorldLexicon, test_questions: list[QAExample]
) -> None:
    plain = play(tokenizer, index, lexicon, test_questions)
    counting = play(tokenizer, index, lexicon, test_questions, count_facts=True)
    hops = {"single_hop": 1, "bridge": 2, "comparison": 2, "three_hop": 3}
    for example, before, after in zip(test_questions, plain, counting, strict=True):
        assert [turn.queries for turn in after.turns] == [turn.queries for turn in before.turns]
        assert (after.answer, after.reward) == (before.answer, before.reward)
        counts = [int(turn.policy_text.split("Facts left: ")[1].split(".")[0]) for turn in after.turns]
        assert counts[0] == hops[example.metadata["type"]]
        assert counts == sorted(counts, reverse=True)  # a fact once read stays read
        if after.reward > 0 and example.metadata["type"] != "comparison":
            assert counts[-1] == 0  # answered when nothing was left (a comparison may decide on one fact)
        assert "Facts left" not in before.turns[0].policy_text


def test_concurrent_repeated_samples_equal_a_lone_episode(
    tokenizer: Any, index: BM25Index, lexicon: WorldLexicon, test_questions: list[QAExample]
) -> None:
    """Three samples of each of 30 questions at once: every sample is the episode the expert plays alone."""
    examples = test_questions[:30]
    together = play(tokenizer, index, lexicon, examples, samples=3)
    for position, example in enumerate(examples):
        alone = play(tokenizer, index, lexicon, [example])[0]
        for sample in together[3 * position : 3 * position + 3]:
            assert sample.question == example.question
            assert sample.response_ids == alone.response_ids
            assert sample.response_mask == alone.response_mask


def test_the_last_turn_answers_after_the_final_turn_notice(
    tokenizer: Any, index: BM25Index, lexicon: WorldLexicon, tiny_world: World
) -> None:
    three_hop = [example for example in tiny_world.questions["test"] if example.metadata["type"] == "three_hop"][:10]
    for trajectory in play(tokenizer, index, lexicon, three_hop, config=EpisodeConfig(max_turns=2)):
        assert [turn.action for turn in trajectory.turns] == ["search", "answer"]


def test_the_last_turn_answers_without_a_notice_when_told_the_turn_budget(
    tokenizer: Any, index: BM25Index, lexicon: WorldLexicon, tiny_world: World
) -> None:
    three_hop = [example for example in tiny_world.questions["test"] if example.metadata["type"] == "three_hop"][:3]
    config = EpisodeConfig(max_turns=2, final_turn_notice=False)

    async def go() -> list[Trajectory]:
        engine = expert_policy(tokenizer, three_hop, lexicon, max_turns=2)
        env = AgentEnv(engine, tokenizer, LocalSearch(index), NoSqueezer(), config)
        try:
            return [await run_episode(env, example.question, example.golden_answers) for example in three_hop]
        finally:
            await env.search.aclose()

    for trajectory in asyncio.run(go()):
        assert [turn.action for turn in trajectory.turns] == ["search", "answer"]


def test_an_unknown_question_is_an_error(
    tokenizer: Any, lexicon: WorldLexicon, test_questions: list[QAExample]
) -> None:
    engine = expert_policy(tokenizer, test_questions, lexicon)
    with pytest.raises(UnknownQuestionError, match="no example"):
        engine.respond("…\nQuestion: Who painted the sky green?\n<|im_start|>assistant\n")
    with pytest.raises(UnknownQuestionError, match="no 'Question: ' line"):
        engine.respond("just text")


def test_split_context_starts_after_the_question_line() -> None:
    """The template's own mention of <information> lies before the question, so it is never read as a result."""
    context = "call … the results come back between <information> and </information>.\nQuestion: Who? \nrest"
    assert split_context(context) == ("Who? ", "\nrest")
