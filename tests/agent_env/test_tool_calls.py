"""The ``tool_calls`` action format: the hermes ``<tool_call>`` parser (rules and fuzzing), the chat template's
turns it is framed in (ChatML without tool support, and a hermes template that wraps tool responses in a user
turn), and whole episodes in that format against real BM25, scripted and with the random-weight tiny Qwen2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_env.engine import TransformersEngine
from agent_env.episode import FINAL_TURN_NOTICE, AgentEnv, EpisodeConfig, Trajectory, run_episode
from agent_env.scripted import ScriptedPolicy
from agent_env.search import LocalSearch
from agent_env.squeezers import NoSqueezer
from agent_env.tool_calls import (
    STOP_STRINGS,
    chat_frames,
    format_tool_call,
    parse_tool_call_action,
    truncate_turn,
)
from data_prep.formats import QAExample
from data_prep.synthetic import World
from retriever_server.bm25 import BM25Index

from .conftest import run_texts

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call functions. Tools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A template of the Qwen2.5 kind (written for this test): tools in a system turn, a tool's response as a user turn
wrapped in ``<tool_response>``."""


def call(*queries: str) -> str:
    return format_tool_call(list(queries))


# --- the parser ------------------------------------------------------------------------------------------------------


def test_a_call_with_a_query_list_is_a_search_with_those_variants() -> None:
    action = parse_tool_call_action(f"<think> two hops </think>\n{call('F. Tamrail', 'Tamrail employer')}")
    assert (action.kind, action.queries) == ("search", ("F. Tamrail", "Tamrail employer"))


@pytest.mark.parametrize(
    ("body", "queries"),
    [
        ('{"name": "search", "arguments": "{\\"query_list\\": [\\"a b\\"]}"}', ("a b",)),  # arguments as a string
        ('{"name": "search", "arguments": {"query": "one query"}}', ("one query",)),
        ('{"name": "search", "arguments": {"query_list": ["  x   y ", "X Y", "", "z"]}}', ("x y", "z")),
        ('{"name": "search", "arguments": {"query_list": ["a", "b", "c", "d", "e"]}}', ("a", "b", "c")),
    ],
    ids=["arguments-string", "single-query", "cleaned-deduplicated", "at-most-max-variants"],
)
def test_variants_are_read_and_cleaned_as_in_the_tags_format(body: str, queries: tuple[str, ...]) -> None:
    assert parse_tool_call_action(f"<tool_call>{body}</tool_call>").queries == queries


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<tool_call>{not json}</tool_call>", "not a JSON object"),
        ('<tool_call>{"name": "lookup", "arguments": {"query_list": ["a"]}}</tool_call>', "unknown tool 'lookup'"),
        ('<tool_call>{"name": "search", "arguments": {"query_list": [1, 2]}}</tool_call>', "list of strings"),
        ('<tool_call>{"name": "search"}</tool_call>', '"arguments"'),
        ('<tool_call>{"name": "search", "arguments": {"query_list": ["  "]}}</tool_call>', "empty search"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "not a JSON object"),
        ('{"name": "search"} </tool_call>', "without a matching <tool_call>"),
        ('<tool_call>{"name": "search"', "unclosed <tool_call>"),
        ("I think the answer is Paris.", "no <tool_call> or <answer>"),
        ("<answer>  </answer>", "empty answer"),
    ],
)
def test_malformed_turns_are_invalid_with_a_reason(text: str, reason: str) -> None:
    action = parse_tool_call_action(text)
    assert action.kind == "invalid"
    assert reason in (action.error or "")


def test_the_first_completed_action_wins_and_one_variant_keeps_the_first() -> None:
    assert parse_tool_call_action(f"<answer> Haive Labs </answer> {call('later')}").answer == "Haive Labs"
    assert parse_tool_call_action(f"{call('first', 'second')} <answer> x </answer>").kind == "search"
    assert parse_tool_call_action(call("first", "second"), max_variants=1).queries == ("first",)


FRAGMENTS = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<answer>", "</answer>", '{"name": "search", "arguments": ', '{"query_list": [',
     '"q"', ", ", "]}", "}", '"', "\\", "[", "{", " ", "\n", "search", "query", "null", "<think>", "##"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=30), st.integers(1, 4), st.integers(1, 40))
def test_the_parser_never_raises_and_stopping_at_the_stop_strings_changes_nothing(
    parts: list[str], max_variants: int, max_chars: int
) -> None:
    text = "".join(parts)
    action = parse_tool_call_action(text, max_variants=max_variants, max_query_chars=max_chars)
    assert action == parse_tool_call_action(truncate_turn(text), max_variants=max_variants, max_query_chars=max_chars)
    if action.kind == "search":
        assert 1 <= len(action.queries) <= max_variants
        assert all(query and len(query) <= max_chars for query in action.queries)
        assert len({query.casefold() for query in action.queries}) == len(action.queries)
    assert (action.kind == "invalid") == (action.error is not None)


QUERY_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(QUERY_TEXT, max_size=5))
def test_any_query_list_round_trips_through_its_json(queries: list[str]) -> None:
    expected: list[str] = []
    for query in (" ".join(query.split()) for query in queries):
        if query and query.casefold() not in {kept.casefold() for kept in expected}:
            expected.append(query)
    action = parse_tool_call_action(call(*queries), max_variants=5, max_query_chars=100)
    assert action.queries == tuple(expected)
    assert action.kind == ("search" if expected else "invalid")


# --- the chat template's turns ---------------------------------------------------------------------------------------


def test_a_chatml_template_frames_the_observation_as_a_tool_turn(policy_tokenizer: Any) -> None:
    frames = chat_frames(policy_tokenizer)
    assert frames.tool.render("PASSAGES") == "<|im_end|>\n<|im_start|>tool\nPASSAGES<|im_end|>\n<|im_start|>assistant\n"
    assert frames.user.before == "<|im_end|>\n<|im_start|>user\n"
    # a policy that stopped on its end-of-turn token does not get a second one
    assert frames.tool.render("P", policy_ended_turn="<|im_end|>").startswith("\n<|im_start|>tool\nP")


def test_a_hermes_template_frames_it_as_a_tool_response_in_a_user_turn(tiny_policy_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)
    tokenizer.chat_template = HERMES_TEMPLATE
    tool = chat_frames(tokenizer).tool
    assert tool.render("P") == "<|im_end|>\n<|im_start|>user\n<tool_response>\nP\n</tool_response><|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )


def test_a_tokenizer_without_a_template_is_refused(tiny_policy_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        chat_frames(tokenizer)


def test_the_format_takes_its_own_templates_and_the_em_reward() -> None:
    with pytest.raises(ValueError, match="template in"):
        EpisodeConfig(protocol="tool_calls", template="rag")
    with pytest.raises(ValueError, match="em reward"):
        EpisodeConfig(protocol="tool_calls", reward="format")
    with pytest.raises(ValueError, match="unknown protocol"):
        EpisodeConfig(protocol="json")


# --- episodes --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(tiny_world: World) -> QAExample:
    found = next(example for example in tiny_world.questions["train"] if example.id == "train-3")
    assert found.golden_answers == ["Haive Labs", "Haive"]
    return found


@pytest.fixture(scope="module")
def index(tiny_world: World) -> BM25Index:
    return BM25Index.build(tiny_world.passages)


def play(env: AgentEnv, example: QAExample) -> Trajectory:
    return asyncio.run(run_episode(env, example.question, example.golden_answers, example_id=example.id))


def scripted(tokenizer: Any, turns: list[str]) -> ScriptedPolicy:
    """Writes ``turns[i]`` as its i-th turn, counting turns by the assistant turns the context has opened."""

    def respond(context: str) -> str:
        return turns[min(context.count("<|im_start|>assistant") - 1, len(turns) - 1)]

    return ScriptedPolicy(tokenizer, respond)


@pytest.mark.parametrize("template", [None, HERMES_TEMPLATE], ids=["chatml", "hermes"])
def test_an_episode_searches_sees_the_passages_in_the_tool_turn_and_answers(
    tiny_policy_dir: Path, index: BM25Index, example: QAExample, template: str | None
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)
    tokenizer.chat_template = template or tokenizer.chat_template
    turns = [f"<think> look up </think>{call('F. Tamrail', 'Tamrail employer')} ignored", "no action here",
             "<answer> Haive Labs </answer>"]  # fmt: skip
    config = EpisodeConfig(protocol="tool_calls", max_turns=3)
    env = AgentEnv(scripted(tokenizer, turns), tokenizer, LocalSearch(index), NoSqueezer(), config)
    trajectory = play(env, example)
    assert (trajectory.termination, trajectory.reward, trajectory.num_turns) == ("answer", 1.0, 3)
    assert [turn.action for turn in trajectory.turns] == ["search", "invalid", "answer"]
    assert trajectory.turns[0].queries == ["F. Tamrail", "Tamrail employer"]
    assert trajectory.turns[0].policy_text.endswith("</tool_call>")  # generation stopped at the call
    policy = run_texts(tokenizer, trajectory.response_ids, trajectory.response_mask, 1)
    environment = run_texts(tokenizer, trajectory.response_ids, trajectory.response_mask, 0)
    assert len(environment) == 2
    assert all("<|im_start|>assistant\n" in text for text in environment)
    tool_turn = "<|im_start|>user\n<tool_response>" if template else "<|im_start|>tool\n"
    assert tool_turn in environment[0]
    assert "Tamrail" in environment[0]
    assert "Your previous turn was not a valid action" in environment[1]
    assert FINAL_TURN_NOTICE.strip() in environment[1]
    assert not any("<|im_start|>" in text for text in policy)  # every frame token is the environment's
    prompt = tokenizer.decode(trajectory.prompt_ids)
    assert "query_list" in prompt
    assert ("Tools:" in prompt) == bool(template)
    assert trajectory.metrics["searches"] == 1
    assert trajectory.metrics["variants_per_search"] == 2


def test_the_random_tiny_model_plays_tool_call_episodes_without_breaking_the_contract(
    tiny_policy_dir: Path, index: BM25Index, tiny_world: World
) -> None:
    import torch

    engine = TransformersEngine.from_pretrained(str(tiny_policy_dir), device="cpu", seed=0)
    config = EpisodeConfig(protocol="tool_calls", max_turns=3, max_turn_tokens=24, temperature=1.0)
    env = AgentEnv(engine, engine.tokenizer, LocalSearch(index), NoSqueezer(), config)
    examples = tiny_world.questions["train"][:4]
    with torch.no_grad():
        trajectories = asyncio.run(_play_all(env, examples))
    for trajectory in trajectories:
        assert len(trajectory.response_ids) == len(trajectory.response_mask) == len(trajectory.response_logprobs)
        assert trajectory.num_turns >= 1
        assert all(turn.action in {"search", "answer", "invalid"} for turn in trajectory.turns)
    assert engine.tokenizer.decode(trajectories[0].prompt_ids).count("query_list") >= 1
    assert STOP_STRINGS[0] == "</tool_call>"


async def _play_all(env: AgentEnv, examples: list[QAExample]) -> list[Trajectory]:
    try:
        return list(await asyncio.gather(*(run_episode(env, e.question, e.golden_answers) for e in examples)))
    finally:
        await env.engine.aclose()  # type: ignore[attr-defined]


def test_format_tool_call_is_hermes_json() -> None:
    body = call("a", "b").removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
    assert json.loads(body) == {"name": "search", "arguments": {"query_list": ["a", "b"]}}
