"""Tests for agent_env.episode: the token/mask contract, faults (retriever, squeezer, policy, context), stops,
rewards and budgets. Policies are scripts or the random-weight tiny Qwen2; search is real BM25, in process or
over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from support import CountingBM25, free_port

from agent_env.engine import LLMEngine, TransformersEngine
from agent_env.episode import (
    FINAL_TURN_NOTICE,
    MIN_TURN_TOKENS,
    AgentEnv,
    EpisodeConfig,
    Trajectory,
    encode_chat_prompt,
    run_episode,
)
from agent_env.protocol import STOP_STRINGS, build_messages, render_observation, render_passages
from agent_env.retrieval import merge_variant_hits
from agent_env.search import HttpSearch, LocalSearch, SearchBackend
from agent_env.squeezers import NoSqueezer, Squeezer, SqueezeRequest, SqueezeResult, fallback_text
from data_prep.formats import QAExample
from data_prep.synthetic import World
from retriever_server.base import SearchHit
from retriever_server.bm25 import BM25Index
from retriever_server.server import ServerThread, create_app

from .conftest import (
    SECRET,
    RecordingEngine,
    ScriptThenModel,
    mask_runs,
    run_texts,
    script,
    token_windows,
)

FEEDBACK_START = "Your previous turn was not a valid action"
SEARCH = "<think> I should look this up. </think> <search> F. Tamrail ## Tamrail employer </search>"


@pytest.fixture(scope="module")
def example(tiny_world: World) -> QAExample:
    """A single-hop question: ``Who employs F. Tamrail?`` (golds ``Haive Labs``, ``Haive``)."""
    found = next(example for example in tiny_world.questions["train"] if example.id == "train-3")
    assert found.golden_answers == ["Haive Labs", "Haive"]
    return found


def make_env(
    engine: LLMEngine, tokenizer: Any, search: SearchBackend, squeezer: Squeezer | None = None, **config: Any
) -> AgentEnv:
    return AgentEnv(engine, tokenizer, search, squeezer or NoSqueezer(), EpisodeConfig(**config))


def play(env: AgentEnv, example: QAExample) -> Trajectory:
    return asyncio.run(run_episode(env, example.question, example.golden_answers, example_id=example.id))


def prompt_length(tokenizer: Any, question: str) -> int:
    return len(encode_chat_prompt(tokenizer, build_messages(question)))


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=False))


def environment_runs(tokenizer: Any, trajectory: Trajectory) -> list[str]:
    return run_texts(tokenizer, trajectory.response_ids, trajectory.response_mask, 0)


def assert_lengths_agree(trajectory: Trajectory) -> None:
    assert len(trajectory.response_ids) == len(trajectory.response_mask) == len(trajectory.response_logprobs)
    assert set(trajectory.response_mask) <= {0, 1}


# ---------------------------------------------------------------------------------------------- secret token


def assert_secret_only_in_environment_tokens(tokenizer: Any, trajectory: Trajectory) -> None:
    ids, mask = trajectory.response_ids, trajectory.response_mask
    full = decode(tokenizer, ids)
    assert SECRET in full, "the test is vacuous unless the secret reached the response"
    for text in run_texts(tokenizer, ids, mask, 1):
        assert SECRET not in text
    windows = token_windows(lambda part: decode(tokenizer, part), ids, SECRET)
    assert len(windows) == full.count(SECRET)
    for window in windows:
        assert [mask[position] for position in window] == [0] * len(window)
    assert all(trajectory.response_logprobs[position] == 0.0 for window in windows for position in window)


class SecretSqueezer(Squeezer):
    """A summary that leaks the secret (it is valid text, so it is used as is)."""

    async def _summarize(self, request: SqueezeRequest) -> str:
        return f"The documents mention {SECRET} and {request.queries[0]}."


@pytest.mark.parametrize(
    ("index_name", "squeezer"),
    [("secret_index", NoSqueezer()), ("world_index", SecretSqueezer())],
    ids=["stamped-passages", "squeezer-summary"],
)
def test_secret_never_in_scripted_policy_tokens(
    request: pytest.FixtureRequest, policy_tokenizer: Any, example: QAExample, index_name: str, squeezer: Squeezer
) -> None:
    index: BM25Index = request.getfixturevalue(index_name)
    policy = script(policy_tokenizer, [SEARCH, "<search> Haive Labs </search>", "<answer> Haive Labs </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(index), squeezer), example)
    assert trajectory.termination == "answer"
    assert trajectory.num_turns == 3
    assert_lengths_agree(trajectory)
    assert_secret_only_in_environment_tokens(policy_tokenizer, trajectory)


def test_secret_never_in_real_model_tokens(
    policy_tokenizer: Any, tiny_engine: TransformersEngine, secret_index: BM25Index, example: QAExample
) -> None:
    policy = ScriptThenModel(policy_tokenizer, [SEARCH], tiny_engine)
    env = make_env(policy, policy_tokenizer, LocalSearch(secret_index), max_turns=4, max_turn_tokens=32)
    trajectory = play(env, example)
    assert trajectory.num_turns >= 2
    assert sum(trajectory.response_mask) > len(policy_tokenizer.encode(SEARCH))  # the model wrote turns too
    assert_lengths_agree(trajectory)
    assert_secret_only_in_environment_tokens(policy_tokenizer, trajectory)


# ---------------------------------------------------------------------------------------------- token contract


def expected_environment_ids(tokenizer: Any, trajectory: Trajectory, turn: int, max_turns: int) -> list[int]:
    """What the environment must have inserted after ``turn``: its observation frame, plus the notice."""
    record = trajectory.turns[turn]
    if turn == trajectory.num_turns - 1:
        return []
    text = render_observation(record.observation) if record.action == "search" else record.observation
    text += FINAL_TURN_NOTICE if turn == max_turns - 2 else ""
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_response_is_engine_tokens_then_environment_tokens_without_retokenizing(
    policy_tokenizer: Any, tiny_engine: TransformersEngine, world_index: BM25Index, example: QAExample
) -> None:
    engine = RecordingEngine(ScriptThenModel(policy_tokenizer, [SEARCH], tiny_engine))
    env = make_env(engine, policy_tokenizer, LocalSearch(world_index), max_turns=4, max_turn_tokens=24)
    trajectory = play(env, example)
    prompt, response = trajectory.prompt_ids, trajectory.response_ids
    assert prompt == encode_chat_prompt(policy_tokenizer, build_messages(example.question))
    assert len(engine.calls) == trajectory.num_turns >= 2
    runs = [value for value, _, _ in mask_runs(trajectory.response_mask)]
    assert runs == [1, 0] * (trajectory.num_turns - 1) + [1]
    position = 0
    for turn, call in enumerate(engine.calls):
        assert call.prompt_ids == prompt + response[:position]  # the context is never re-tokenized
        generated = call.generation
        end = position + len(generated.token_ids)
        assert response[position:end] == generated.token_ids
        assert trajectory.response_mask[position:end] == [1] * len(generated.token_ids)
        assert trajectory.response_logprobs[position:end] == generated.logprobs
        inserted = expected_environment_ids(policy_tokenizer, trajectory, turn, max_turns=4)
        assert response[end : end + len(inserted)] == inserted
        assert trajectory.response_mask[end : end + len(inserted)] == [0] * len(inserted)
        assert trajectory.response_logprobs[end : end + len(inserted)] == [0.0] * len(inserted)
        position = end + len(inserted)
    assert position == len(response)
    assert_lengths_agree(trajectory)
    model_logprobs = [logprob for call in engine.calls[1:] for logprob in call.generation.logprobs]
    assert all(logprob < 0 for logprob in model_logprobs)  # real log-probs, so the equality above means something
    assert engine.calls[0].generation.logprobs[0] == ScriptThenModel.SCRIPT_LOGPROB


def test_metrics_count_what_happened(policy_tokenizer: Any, world_index: BM25Index, example: QAExample) -> None:
    policy = script(policy_tokenizer, [SEARCH, "<answer> Haive Labs </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index), topk=3), example)
    queries = ["F. Tamrail", "Tamrail employer"]
    assert trajectory.turns[0].queries == queries
    passages = merge_variant_hits(world_index.batch_search(queries, 3))
    assert trajectory.turns[0].observation == render_passages(passages)
    metrics = trajectory.metrics
    assert metrics["searches"] == 1
    assert metrics["variants_per_search"] == 2
    assert metrics["unique_passages_per_search"] == len(passages)
    assert metrics["valid_action_rate"] == 1.0
    assert metrics["answered"] == 1.0
    assert metrics["policy_tokens"] == sum(trajectory.response_mask)
    assert metrics["response_tokens"] == len(trajectory.response_ids)
    assert metrics["retrieval_errors"] == metrics["squeezer_fallbacks"] == 0


def test_search_variants_runs_only_the_first_written_variants(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    policy = script(policy_tokenizer, [SEARCH, "<answer> Haive Labs </answer>"])
    env = make_env(policy, policy_tokenizer, LocalSearch(world_index), topk=3, search_variants=1)
    trajectory = play(env, example)
    assert trajectory.turns[0].queries == ["F. Tamrail", "Tamrail employer"]  # as written
    assert trajectory.turns[0].observation == render_passages(
        merge_variant_hits(world_index.batch_search(["F. Tamrail"], 3))
    )
    assert trajectory.metrics["variants_per_search"] == 1
    assert env.tokenizer.decode(trajectory.prompt_ids).count("up to 3 query") == 1  # the prompt is unchanged


# ---------------------------------------------------------------------------------------------- retriever faults


def test_retriever_down_is_reported_and_episode_goes_on(policy_tokenizer: Any, example: QAExample) -> None:
    search = HttpSearch.from_url(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01, timeout=2.0)
    policy = script(policy_tokenizer, [SEARCH, "<answer> Haive Labs </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, search), example)
    assert trajectory.turns[0].observation.startswith("Search failed (RetrieverUnavailableError")
    assert trajectory.turns[0].hits_per_query == []
    assert trajectory.metrics["retrieval_errors"] == 1
    assert "<information>Search failed" in environment_runs(policy_tokenizer, trajectory)[0]
    assert (trajectory.termination, trajectory.answer, trajectory.reward) == ("answer", "Haive Labs", 1.0)


class SlowRetriever:
    """The world index behind a fixed delay per batch (a slow retriever server)."""

    def __init__(self, index: BM25Index, delay_s: float) -> None:
        self.index = index
        self.delay_s = delay_s

    def __len__(self) -> int:
        return len(self.index)

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        return self.batch_search([query], k)[0]

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
        time.sleep(self.delay_s)
        return self.index.batch_search(queries, k, threads)

    def describe(self) -> dict[str, Any]:
        return {"kind": "slow", "delay_s": self.delay_s}


SLOW_DELAY_S = 0.6


@pytest.fixture(scope="module")
def slow_server(world_index: CountingBM25) -> Iterator[str]:
    with ServerThread(create_app(SlowRetriever(world_index, SLOW_DELAY_S))) as server:
        yield server.url


def test_slow_retriever_past_client_timeout_gives_error_observation(
    policy_tokenizer: Any, slow_server: str, example: QAExample
) -> None:
    search = HttpSearch.from_url(slow_server, timeout=SLOW_DELAY_S / 4, retries=0)
    policy = script(policy_tokenizer, [SEARCH, "<answer> Haive Labs </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, search), example)
    assert "Timeout" in trajectory.turns[0].observation
    assert trajectory.turns[0].observation.startswith("Search failed")
    assert trajectory.metrics["retrieval_errors"] == 1
    assert trajectory.termination == "answer"


def test_slow_retriever_within_client_timeout_gives_passages(
    policy_tokenizer: Any, slow_server: str, world_index: BM25Index, example: QAExample
) -> None:
    search = HttpSearch.from_url(slow_server, timeout=SLOW_DELAY_S * 10, retries=0)
    policy = script(policy_tokenizer, [SEARCH, "<answer> Haive Labs </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, search), example)
    passages = merge_variant_hits(world_index.batch_search(trajectory.turns[0].queries, 3))
    assert trajectory.turns[0].observation == render_passages(passages)
    assert trajectory.metrics["retrieval_errors"] == 0
    assert trajectory.metrics["retrieval_latency_s"] >= SLOW_DELAY_S


# ---------------------------------------------------------------------------------------------- squeezer faults


class SleepySqueezer(Squeezer):
    async def _summarize(self, request: SqueezeRequest) -> str:
        await asyncio.sleep(30)
        return "too late"


class EmptySqueezer(Squeezer):
    async def _summarize(self, request: SqueezeRequest) -> str:
        return ""


class AnswerTagSqueezer(Squeezer):
    """Writes the gold answer as an action: garbage, and it must never score."""

    async def _summarize(self, request: SqueezeRequest) -> str:
        return "<answer> Haive Labs </answer>"


class RaisingSqueezer(Squeezer):
    async def _summarize(self, request: SqueezeRequest) -> str:
        raise ConnectionError("squeezer endpoint refused the connection")


@pytest.mark.parametrize(
    ("squeezer", "error"),
    [
        (SleepySqueezer(timeout_s=0.05), "timed out"),
        (EmptySqueezer(), "empty summary"),
        (AnswerTagSqueezer(), "protocol tags"),
        (RaisingSqueezer(), "ConnectionError"),
    ],
    ids=["timeout", "empty", "answer-tags", "raises"],
)
def test_squeezer_failure_falls_back_to_truncated_raw_passages(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample, squeezer: Squeezer, error: str
) -> None:
    policy = script(policy_tokenizer, [SEARCH, "<answer> not sure </answer>"])
    env = make_env(policy, policy_tokenizer, LocalSearch(world_index), squeezer, max_observation_tokens=2000)
    trajectory = play(env, example)
    record = trajectory.turns[0]
    passages = merge_variant_hits(world_index.batch_search(record.queries, 3))
    raw = SqueezeRequest(example.question, tuple(record.queries), tuple(passages))
    assert record.observation == fallback_text(raw, squeezer.fallback_chars)
    assert record.squeezer_fell_back
    assert error in (record.squeezer_error or "")
    assert trajectory.metrics["squeezer_fallbacks"] == 1
    assert (trajectory.termination, trajectory.answer, trajectory.reward) == ("answer", "not sure", 0.0)


class RogueSqueezer(Squeezer):
    """Bypasses the base class's checks and puts the gold answer, as an action, into the observation."""

    async def _summarize(self, request: SqueezeRequest) -> str:
        raise AssertionError("not called")

    async def squeeze(self, request: SqueezeRequest) -> SqueezeResult:
        return SqueezeResult("The answer is <answer> Haive Labs </answer>")


@pytest.mark.parametrize("reward", ["em", "format"])
def test_gold_answer_in_observation_does_not_count_as_the_policys(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample, reward: str
) -> None:
    policy = script(policy_tokenizer, [SEARCH, "I am not sure what to do now."])
    env = make_env(policy, policy_tokenizer, LocalSearch(world_index), RogueSqueezer(), max_turns=2, reward=reward)
    trajectory = play(env, example)
    assert "<answer> Haive Labs </answer>" in decode(policy_tokenizer, trajectory.response_ids)
    assert (trajectory.termination, trajectory.answer, trajectory.reward) == ("max_turns", None, 0.0)
    assert trajectory.metrics["answered"] == 0.0


# ---------------------------------------------------------------------------------------------- policy faults


@pytest.mark.parametrize(
    ("turn_text", "reason"),
    [
        ("I think the answer might be Haive Labs.", "no <search> or <answer>"),
        ("<search> F. Tamrail employer", "unclosed <search>"),
        ("<Search> F. Tamrail </Search>", "case-sensitive"),
        ("<ANSWER> Haive Labs </ANSWER>", "case-sensitive"),
        ("Haive Labs </answer>", "without a matching <answer>"),
        ("<search> ## ## </search>", "empty search"),
    ],
)
def test_malformed_output_every_turn_gets_feedback_and_no_reward(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample, turn_text: str, reason: str
) -> None:
    policy = script(policy_tokenizer, [turn_text])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index), max_turns=3), example)
    assert [turn.action for turn in trajectory.turns] == ["invalid"] * 3
    assert all(reason in (turn.error or "") for turn in trajectory.turns)
    feedback = environment_runs(policy_tokenizer, trajectory)
    assert len(feedback) == 2
    assert all(FEEDBACK_START in text and reason in text for text in feedback)
    assert trajectory.metrics["valid_action_rate"] == 0.0
    assert trajectory.metrics["searches"] == 0
    assert (trajectory.termination, trajectory.answer, trajectory.reward) == ("max_turns", None, 0.0)


# ---------------------------------------------------------------------------------------------- budgets


class LongSqueezer(Squeezer):
    """A valid but enormous summary."""

    async def _summarize(self, request: SqueezeRequest) -> str:
        return " ".join(f"Fact {number}: {request.queries[0]} worked somewhere." for number in range(400))


def test_context_overflow_cuts_the_observation_and_ends_context_full(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    limit = prompt_length(policy_tokenizer, example.question) + 200
    engine = RecordingEngine(script(policy_tokenizer, [SEARCH]))
    env = make_env(
        engine, policy_tokenizer, LocalSearch(world_index), LongSqueezer(),
        max_context_tokens=limit, max_observation_tokens=5000, max_turns=6, max_turn_tokens=40,
    )  # fmt: skip
    trajectory = play(env, example)
    assert trajectory.termination == "context_full"
    assert len(trajectory.prompt_ids) + len(trajectory.response_ids) <= limit
    assert all(len(call.prompt_ids) + call.sampling.max_new_tokens <= limit for call in engine.calls)
    first = trajectory.turns[0].observation
    assert first.startswith("Fact 0: F. Tamrail")
    assert "Fact 399" not in first
    assert environment_runs(policy_tokenizer, trajectory)[0].endswith("</information>\n\n")  # the frame stays whole
    assert trajectory.response_mask[-1] == 1  # no observation is left that the policy never got to read


def test_response_budget_ends_the_episode(policy_tokenizer: Any, world_index: BM25Index, example: QAExample) -> None:
    engine = RecordingEngine(script(policy_tokenizer, [SEARCH]))
    env = make_env(
        engine, policy_tokenizer, LocalSearch(world_index), LongSqueezer(),
        max_response_tokens=150, max_observation_tokens=5000, max_turns=6, max_turn_tokens=40,
    )  # fmt: skip
    trajectory = play(env, example)
    assert trajectory.termination == "response_budget"
    assert len(trajectory.response_ids) <= 150
    assert all(
        len(call.prompt_ids) - len(trajectory.prompt_ids) + call.sampling.max_new_tokens <= 150 for call in engine.calls
    )
    assert trajectory.response_mask[-1] == 1


def test_turn_budget_below_min_turn_tokens_still_answers_its_last_observation(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    assert MIN_TURN_TOKENS > 8
    limit = prompt_length(policy_tokenizer, example.question) + 120
    engine = RecordingEngine(script(policy_tokenizer, ["<search> Tamrail </search>"]))
    env = make_env(
        engine, policy_tokenizer, LocalSearch(world_index), LongSqueezer(),
        max_context_tokens=limit, max_observation_tokens=5000, max_turns=6, max_turn_tokens=8,
    )  # fmt: skip
    trajectory = play(env, example)
    assert trajectory.termination == "context_full"
    assert len(trajectory.prompt_ids) + len(trajectory.response_ids) <= limit
    assert trajectory.response_mask[-1] == 1  # every observation inserted was followed by a policy turn
    assert len(engine.calls) == trajectory.num_turns >= 2


def test_prompt_longer_than_context_ends_before_any_turn(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    engine = RecordingEngine(script(policy_tokenizer, [SEARCH]))
    trajectory = play(make_env(engine, policy_tokenizer, LocalSearch(world_index), max_context_tokens=10), example)
    assert (trajectory.termination, trajectory.num_turns, trajectory.response_ids) == ("context_full", 0, [])
    assert engine.calls == []


def test_max_observation_tokens_cuts_the_body(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    policy = script(policy_tokenizer, [SEARCH, "<answer> Haive </answer>"])
    env = make_env(policy, policy_tokenizer, LocalSearch(world_index), topk=5, max_observation_tokens=20)
    trajectory = play(env, example)
    body = trajectory.turns[0].observation
    full = render_passages(merge_variant_hits(world_index.batch_search(trajectory.turns[0].queries, 5)))
    assert len(policy_tokenizer.encode(full)) > 20
    assert full.startswith(body)
    assert 0 < len(policy_tokenizer.encode(body, add_special_tokens=False)) <= 20
    frame = policy_tokenizer.encode(render_observation(""), add_special_tokens=False)
    inserted = [end - start for value, start, end in mask_runs(trajectory.response_mask) if value == 0]
    assert len(inserted) == 1
    assert inserted[0] <= 20 + len(frame) + 2
    assert trajectory.metrics["observation_tokens"] == inserted[0]


def test_max_turn_tokens_bounds_every_model_turn(
    policy_tokenizer: Any, tiny_engine: TransformersEngine, world_index: BM25Index, example: QAExample
) -> None:
    engine = RecordingEngine(tiny_engine)
    env = make_env(engine, policy_tokenizer, LocalSearch(world_index), max_turns=3, max_turn_tokens=6)
    trajectory = play(env, example)
    policy_runs = [end - start for value, start, end in mask_runs(trajectory.response_mask) if value == 1]
    assert len(policy_runs) == trajectory.num_turns
    assert max(policy_runs) <= 6
    assert all(call.sampling.max_new_tokens == 6 for call in engine.calls)
    assert "length" in {turn.stop_reason for turn in trajectory.turns}


def test_long_scripted_turn_is_cut_at_max_turn_tokens(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    policy = script(policy_tokenizer, ["<think> " + "hmm " * 50 + "</think> <answer> Haive </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index), max_turn_tokens=10), example)
    assert all(turn.stop_reason == "length" for turn in trajectory.turns)
    assert sum(trajectory.response_mask) == 10 * trajectory.num_turns
    assert trajectory.answer is None


def test_sampling_params_carry_the_episode_config(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    engine = RecordingEngine(script(policy_tokenizer, [SEARCH, SEARCH, "<answer> Haive </answer>"]))
    env = make_env(engine, policy_tokenizer, LocalSearch(world_index), temperature=0.7, top_p=0.9, max_turn_tokens=48)
    play(env, example)
    assert len(engine.calls) == 3
    for call in engine.calls:
        assert (call.sampling.temperature, call.sampling.top_p) == (0.7, 0.9)
        assert call.sampling.stop == STOP_STRINGS
        assert call.sampling.max_new_tokens == 48


# ---------------------------------------------------------------------------------------------- stops and notice


def test_final_turn_notice_precedes_the_last_turn_as_environment_tokens(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    policy = script(policy_tokenizer, [SEARCH, "<search> Haive Labs </search>", "<answer> Haive Labs </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index), max_turns=3), example)
    first, second = environment_runs(policy_tokenizer, trajectory)
    assert FINAL_TURN_NOTICE not in first
    assert second.endswith("</information>\n\n" + FINAL_TURN_NOTICE)
    assert decode(policy_tokenizer, trajectory.response_ids).count(FINAL_TURN_NOTICE) == 1
    assert (trajectory.termination, trajectory.reward) == ("answer", 1.0)


def test_final_turn_notice_can_be_turned_off(policy_tokenizer: Any, world_index: BM25Index, example: QAExample) -> None:
    policy = script(policy_tokenizer, [SEARCH])
    env = make_env(policy, policy_tokenizer, LocalSearch(world_index), max_turns=3, final_turn_notice=False)
    trajectory = play(env, example)
    assert FINAL_TURN_NOTICE not in decode(policy_tokenizer, trajectory.response_ids)


def test_search_on_the_last_turn_ends_unanswered(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample
) -> None:
    policy = script(policy_tokenizer, [SEARCH])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index), max_turns=3), example)
    assert [turn.action for turn in trajectory.turns] == ["search"] * 3
    assert trajectory.metrics["searches"] == 2  # the last turn's search is not run
    assert trajectory.turns[-1].observation == ""
    assert trajectory.response_mask[-1] == 1
    assert (trajectory.termination, trajectory.answer, trajectory.reward) == ("max_turns", None, 0.0)


# ---------------------------------------------------------------------------------------------- rewards


@pytest.mark.parametrize(
    ("answer", "reward"),
    [("Haive Labs", 1.0), ("Haive", 1.0), ("the haive labs.", 1.0), ("Momwick", 0.0), ("Haive Labs Inc", 0.0)],
)
def test_em_reward_against_golds(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample, answer: str, reward: float
) -> None:
    policy = script(policy_tokenizer, [SEARCH, f"<answer> {answer} </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index)), example)
    assert (trajectory.answer, trajectory.reward) == (answer, reward)


@pytest.mark.parametrize(
    ("turns", "reward"),
    [
        ([SEARCH, "<answer> Haive </answer>"], 1.0),
        (["<answer> Haive </answer>"], 1.0),
        (["oops", "<answer> Haive </answer>"], 0.8),
        ([SEARCH, "<answer> Momwick </answer>"], 0.2),
        (["oops", "<answer> Momwick </answer>"], 0.1),
        (["oops"], 0.0),
    ],
)
def test_format_reward(
    policy_tokenizer: Any, world_index: BM25Index, example: QAExample, turns: list[str], reward: float
) -> None:
    policy = script(policy_tokenizer, turns)
    env = make_env(policy, policy_tokenizer, LocalSearch(world_index), max_turns=2, reward="format")
    assert play(env, example).reward == pytest.approx(reward)


# ---------------------------------------------------------------------------------------------- config, trajectory


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_turns": 0}, "max_turns must be >= 1"),
        ({"topk": 0}, "topk must be >= 1"),
        ({"max_turn_tokens": 0}, "max_turn_tokens must be >= 1"),
        ({"max_variants": 0}, "max_variants must be >= 1"),
        ({"search_variants": 0}, "search_variants must be >= 1 or None"),
        ({"reward": "f1"}, "unknown reward 'f1'"),
        ({"max_response_tokens": 0}, "max_response_tokens must be >= 1"),
        ({"max_query_chars": 0}, "max_query_chars must be >= 1"),
        ({"temperature": -0.5}, "temperature must be finite and >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_episode_config_rejects_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EpisodeConfig(**options)


def test_trajectory_round_trips_through_json(policy_tokenizer: Any, world_index: BM25Index, example: QAExample) -> None:
    policy = script(policy_tokenizer, [SEARCH, "oops", "<answer> Haive </answer>"])
    trajectory = play(make_env(policy, policy_tokenizer, LocalSearch(world_index)), example)
    assert trajectory.turns[0].hits_per_query
    assert trajectory.turns[1].error
    data = json.loads(json.dumps(trajectory.to_dict()))
    restored = Trajectory.from_dict(data)
    assert restored == trajectory
    assert restored.turns[0].hits_per_query == trajectory.turns[0].hits_per_query
    assert restored.example_id == example.id
