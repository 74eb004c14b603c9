"""eval.methods: the registry, each method's episode settings, naive RAG's retrieval, and one-turn episodes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from support import free_port

from agent_env.episode import AgentEnv, EpisodeConfig, run_episode
from agent_env.scripted import ScriptedPolicy
from agent_env.search import HttpSearch, LocalSearch
from agent_env.squeezers import NoSqueezer
from data_prep.synthetic import World
from eval.methods import METHODS, cut_to_tokens, parse_methods
from eval.metrics import example_metrics
from retriever_server.bm25 import BM25Index


def env_with(tokenizer: Any, search: Any, respond: Any, **config: Any) -> AgentEnv:
    return AgentEnv(ScriptedPolicy(tokenizer, respond), tokenizer, search, NoSqueezer(), EpisodeConfig(**config))


def test_registry_order_and_unknown_names() -> None:
    assert list(METHODS) == ["direct", "rag", "search_r1", "expandsearch"]
    assert parse_methods("expandsearch, direct") == ["direct", "expandsearch"]
    with pytest.raises(ValueError, match=r"unknown method 'ircot'; known: direct, rag, search_r1, expandsearch"):
        parse_methods("rag,ircot")
    with pytest.raises(ValueError, match="empty"):
        parse_methods(",")


def test_each_method_sets_its_template_and_limits_and_decodes_greedily() -> None:
    base = EpisodeConfig(max_turns=5, max_variants=4, temperature=1.0, topk=7)
    configs = {name: method.episode_config(base) for name, method in METHODS.items()}
    assert {name: config.template for name, config in configs.items()} == {
        "direct": "direct",
        "rag": "rag",
        "search_r1": "search_r1",
        "expandsearch": "expandsearch",
    }
    assert [configs[name].max_turns for name in METHODS] == [1, 1, 5, 5]
    assert configs["search_r1"].max_variants == 1
    assert configs["expandsearch"].max_variants == 4
    assert all(config.temperature == 0.0 and config.topk == 7 for config in configs.values())
    assert not METHODS["direct"].retrieves
    assert all(METHODS[name].retrieves for name in ("rag", "search_r1", "expandsearch"))


def test_rag_searches_the_question_once_and_puts_the_passages_before_it(
    policy_tokenizer: Any, world_bm25: BM25Index, tiny_world: World
) -> None:
    example = tiny_world.questions["test"][0]
    env = env_with(policy_tokenizer, LocalSearch(world_bm25), lambda context: "", topk=2)
    prepared = asyncio.run(METHODS["rag"].prepare(env, example.question))
    (retrieval,) = prepared.environment_turns
    assert (retrieval.action, retrieval.queries) == ("retrieve", [example.question])
    expected = [hit.id for hit in world_bm25.search(example.question, 2)]
    assert [hit["id"] for hit in retrieval.hits_per_query[0]] == expected
    assert retrieval.observation.startswith("Doc 1 (Title: ")
    assert prepared.question == f"<information>{retrieval.observation}</information>\nQuestion: {example.question}"


def test_rag_documents_are_cut_to_the_observation_budget(
    policy_tokenizer: Any, world_bm25: BM25Index, tiny_world: World
) -> None:
    env = env_with(policy_tokenizer, LocalSearch(world_bm25), lambda context: "", max_observation_tokens=8)
    prepared = asyncio.run(METHODS["rag"].prepare(env, tiny_world.questions["test"][0].question))
    observation = prepared.environment_turns[0].observation
    assert len(policy_tokenizer.encode(observation, add_special_tokens=False)) <= 9  # decode/encode may shift one
    assert cut_to_tokens(policy_tokenizer, " short ", 100) == "short"


def test_rag_with_the_retriever_down_answers_without_documents(policy_tokenizer: Any) -> None:
    down = HttpSearch.from_url(f"http://127.0.0.1:{free_port()}", retries=0)
    env = env_with(policy_tokenizer, down, lambda context: "")
    prepared = asyncio.run(METHODS["rag"].prepare(env, "Who founded Xol?"))
    assert prepared.environment_turns[0].observation.startswith("Retrieval failed (")
    assert prepared.environment_turns[0].hits_per_query == []


def test_direct_is_one_turn_and_a_search_there_ends_it_unanswered(policy_tokenizer: Any, world_bm25: BM25Index) -> None:
    prompts: list[str] = []

    def respond(context: str) -> str:
        prompts.append(context)
        return "<search> Xol founder </search>"

    env = env_with(policy_tokenizer, LocalSearch(world_bm25), respond)
    env = replace(env, config=METHODS["direct"].episode_config(env.config))
    trajectory = asyncio.run(run_episode(env, "Who founded Xol?", ["Kalmar"]))
    assert (trajectory.num_turns, trajectory.answer, trajectory.termination) == (1, None, "max_turns")
    assert trajectory.metrics["searches"] == 0
    assert "there is no search engine" in prompts[0]
    row = example_metrics(trajectory, ["Kalmar"], {}, retrieves=False)
    assert (row["em"], row["answer_in_passages"]) == (0.0, None)


def test_rag_episode_answers_from_the_documents_in_its_prompt(
    policy_tokenizer: Any, world_bm25: BM25Index, tiny_world: World
) -> None:
    example = next(e for e in tiny_world.questions["test"] if e.metadata["type"] == "single_hop")

    def respond(context: str) -> str:
        documents = context.split("<information>")[-1].split("</information>")[0]
        found = [gold for gold in example.golden_answers if gold in documents]
        return f"<answer> {found[0] if found else 'unknown'} </answer>"

    env = env_with(policy_tokenizer, LocalSearch(world_bm25), respond)
    env = replace(env, config=METHODS["rag"].episode_config(env.config))
    prepared = asyncio.run(METHODS["rag"].prepare(env, example.question))
    trajectory = asyncio.run(run_episode(env, prepared.question, example.golden_answers))
    row = example_metrics(
        trajectory, example.golden_answers, example.metadata, environment_turns=prepared.environment_turns
    )
    assert (row["turns"], row["searches"], row["variants"]) == (1, 1, 1)
    assert row["answer_in_passages"] == row["em"], "the script answers exactly when the documents hold a gold"
    assert row["recall"] is not None


def test_the_agents_keep_the_runs_protocol_and_the_one_turn_baselines_answer_in_tags() -> None:
    base = EpisodeConfig(protocol="tool_calls")
    assert METHODS["expandsearch"].episode_config(base).protocol == "tool_calls"
    assert METHODS["search_r1"].episode_config(base).protocol == "tool_calls"
    assert METHODS["direct"].episode_config(base).protocol == "tags"
    assert METHODS["rag"].episode_config(base).template == "rag"
