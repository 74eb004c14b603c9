"""Tests for real-data demonstrations (``data_prep.demos``): real sample slices, a real BM25 index, real tokenizers.

The contract checked on every kept demonstration: the token trajectory is the chat view's text, the mask is 0 on
every environment token (observations, the final-turn notice) and 1 on every policy token, every quote in a
``<think>`` was shown by an earlier observation, the answer is the gold. The reader round-trips and feeds the
warm start's masked loss; rejections are counted, and an episode whose searches find nothing is rejected.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent_env.episode import FINAL_TURN_NOTICE, EpisodeConfig
from agent_env.protocol import parse_action
from agent_env.search import HttpSearch, LocalSearch
from agent_env.squeezers import make_squeezer
from data_prep.demo_plans import bare_title, plan_file
from data_prep.demo_responder import REJECTION_REASONS, shown_sentences
from data_prep.demos import (
    DEMOS_FILE,
    SUMMARY_FILE,
    DemoJob,
    breadth_for,
    play_plans,
    prepare_demos,
    read_demonstrations,
)
from expandsearch.sft import IGNORE_INDEX, bc_example
from retriever_server.index_dir import load_index
from retriever_server.server import ServerThread, create_app

SAMPLES = {
    "hotpotqa": "hotpotqa/hotpotqa_distractor_dev300.jsonl",
    "2wikimultihopqa": "2wikimultihopqa/2wiki_dev_with_context80.jsonl",
    "musique": "musique/musique_ans_dev100.jsonl",
}
LIMIT = 10  # questions per sample file


def inputs(real_data: Path) -> tuple[str, ...]:
    return tuple(str(real_data / relative) for relative in SAMPLES.values())


@pytest.fixture(scope="module")
def tiny_demos(real_data: Path, tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepare_demos`` on 10 questions of each sample, BM25 over their union corpus, the tiny tokenizer."""
    out = tmp_path_factory.mktemp("demos")
    prepare_demos(DemoJob(inputs(real_data), str(out), str(tiny_policy_dir), build_index=True, limit=LIMIT))
    return out


@pytest.fixture(scope="module")
def policy_tokenizer(tiny_policy_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / DEMOS_FILE).read_text(encoding="utf-8").splitlines()]


def runs(record: dict[str, Any]) -> list[tuple[int, list[int]]]:
    """The response as (mask, ids) runs: policy turns (1) and environment insertions (0), alternating."""
    pieces: list[tuple[int, list[int]]] = []
    for token, mask in zip(record["response_ids"], record["response_mask"], strict=True):
        if pieces and pieces[-1][0] == mask:
            pieces[-1][1].append(token)
        else:
            pieces.append((mask, [token]))
    return pieces


def check_contract(record: dict[str, Any], tokenizer: Any) -> None:
    pieces = runs(record)
    texts = [(mask, tokenizer.decode(ids, skip_special_tokens=True)) for mask, ids in pieces]
    assert texts[0][0] == 1
    assert texts[-1][0] == 1
    policy = [text for mask, text in texts if mask == 1]
    environment = [text for mask, text in texts if mask == 0]
    for text in environment:  # every environment token is masked: each masked run is an observation (+ notice)
        assert text.strip().startswith("<information>"), text
        assert text.replace(FINAL_TURN_NOTICE, "").strip().endswith("</information>"), text
    for text in policy:  # and no policy run holds environment text
        assert "<information>" not in text
        assert FINAL_TURN_NOTICE.strip() not in text
    assistant = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    assert assistant == [text.strip() for text in policy]
    assert [m["content"] for m in record["messages"][1:] if m["role"] == "user"] == [t.strip() for t in environment]
    assert len(record["quotes"]) == len(policy)
    for turn, (quotes, text) in enumerate(zip(record["quotes"], policy, strict=True)):
        think = text.split("</think>")[0]
        shown = " ".join(" ".join(env.split()) for env in environment[:turn])
        for quote in quotes:
            assert f'"{quote}"' in think
            assert " ".join(quote.split()) in shown, (quote, shown)
    final = parse_action(policy[-1])
    assert final.kind == "answer"
    assert final.answer == record["golden_answers"][0]
    assert record["reward"] == 1.0
    for text in policy[:-1]:
        action = parse_action(text)
        assert action.kind == "search"
        assert 1 <= len(action.queries) <= record["breadth"]


def test_plans_follow_what_each_dataset_gives(real_data: Path) -> None:
    hotpot = plan_file(real_data / SAMPLES["hotpotqa"], limit=40)
    bridges = [p for p in hotpot.plans if p.hops[-1].after is not None]
    assert bridges, "some HotpotQA bridge question chains its hops"
    for plan in bridges:  # the bridge entity is the later paragraph's title, as the earlier hop yields it
        later = plan.hops[-1]
        assert later.bridge == bare_title(later.title) == plan.hops[later.after].value
        assert any(later.bridge in query for query in later.queries)
    twowiki = plan_file(real_data / SAMPLES["2wikimultihopqa"], limit=20)
    for plan in twowiki.plans:
        triples = plan.example.metadata["evidences"]
        assert [hop.value for hop in plan.hops] == [str(triple[2]).strip() for triple in triples]
    musique = plan_file(real_data / SAMPLES["musique"], limit=20)
    for plan in musique.plans:
        steps = plan.example.metadata["question_decomposition"]
        assert len(plan.hops) == len(steps)
        assert plan.hops[1].after == 0
        # "#1" is filled with the first hop's answer in the second hop's wordings
        assert "#1" in steps[1]["question"]
        assert all("#1" not in query for query in plan.hops[1].queries)
        assert any(steps[0]["answer"] in query for query in plan.hops[1].queries)
    assert sum(hotpot.totals.values()) == 40
    assert sum(twowiki.totals.values()) == 20


def test_demonstrations_keep_the_contract(tiny_demos: Path, policy_tokenizer: Any) -> None:
    records = lines(tiny_demos)
    assert {record["data_source"] for record in records} == set(SAMPLES)
    for record in records:
        check_contract(record, policy_tokenizer)
    assert {record["breadth"] for record in records} == {1, 2, 3}
    assert any(record["searches"] >= 2 for record in records)  # multi-hop questions search more than once


def test_summary_counts_every_question(tiny_demos: Path) -> None:
    summary = json.loads((tiny_demos / SUMMARY_FILE).read_text())
    records = lines(tiny_demos)
    for source, entry in summary["datasets"].items():
        assert entry["questions"] == LIMIT
        assert entry["kept"] == sum(record["data_source"] == source for record in records) > 0
        assert entry["kept"] + sum(entry["rejected"].values()) == LIMIT
        assert set(entry["rejected"]) <= set(REJECTION_REASONS)
    assert summary["squeezer"] == "extractive"
    assert summary["topk"] == 3
    assert summary["protocol"] == "tags"


def test_reader_round_trips_and_feeds_the_masked_loss(tiny_demos: Path, tiny_policy_dir: Path) -> None:
    records = lines(tiny_demos)
    demos = read_demonstrations(tiny_demos / DEMOS_FILE, tokenizer=str(tiny_policy_dir))
    assert [d.example_id for d in demos] == [r["id"] for r in records]
    for demo, record in zip(demos, records, strict=True):
        assert (demo.prompt_ids, demo.response_ids, demo.response_mask) == (
            record["prompt_ids"],
            record["response_ids"],
            record["response_mask"],
        )
        assert demo.reward == 1.0
        assert demo.tokenizer == record["tokenizer"]
        input_ids, labels = bc_example(demo)
        assert input_ids == demo.prompt_ids + demo.response_ids
        policy = [t for t, m in zip(demo.response_ids, demo.response_mask, strict=True) if m]
        assert [label for label in labels if label != IGNORE_INDEX] == policy
    with pytest.raises(ValueError, match="tokenized with"):
        read_demonstrations(tiny_demos / DEMOS_FILE, tokenizer="smollm2")


def test_reader_rejects_a_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / DEMOS_FILE
    path.write_text('{"id": "a", "prompt_ids": [1], "response_ids": [2, 3], "response_mask": [1]}\n')
    with pytest.raises(ValueError, match=rf"{DEMOS_FILE}:1: not a demonstration line"):
        read_demonstrations(path)


def test_breadths_are_seeded_and_mixed() -> None:
    ids = [f"q{i}" for i in range(60)]
    first = [breadth_for(i, (1, 2, 3), 0) for i in ids]
    assert first == [breadth_for(i, (1, 2, 3), 0) for i in ids]
    assert first != [breadth_for(i, (1, 2, 3), 1) for i in ids]
    assert set(first) == {1, 2, 3}


def play(plans: list[Any], search: Any, tokenizer: Any, config: EpisodeConfig, breadth: int = 2) -> list[Any]:
    squeezer = make_squeezer("extractive")
    return asyncio.run(
        play_plans(plans, [breadth] * len(plans), tokenizer=tokenizer, search=search, squeezer=squeezer, config=config)
    )


def test_searches_that_find_nothing_are_rejected(real_data: Path, tiny_demos: Path, policy_tokenizer: Any) -> None:
    planned = plan_file(real_data / SAMPLES["hotpotqa"], limit=LIMIT)
    search = LocalSearch(load_index(tiny_demos / "index"))
    played = play(planned.plans, search, policy_tokenizer, EpisodeConfig())
    assert any(p.rejected is None for p in played)
    blind = [replace(p, hops=tuple(replace(h, queries=("zqxj vwkp",)) for h in p.hops)) for p in planned.plans]
    assert {p.rejected for p in play(blind, search, policy_tokenizer, EpisodeConfig())} == {"evidence_not_shown"}
    # two turns leave one search: a two-hop chain finishes only when that one search shows both hops
    chains = [p for p in planned.plans if len(p.hops) == 2 and p.hops[1].after == 0]
    short = play(chains, search, policy_tokenizer, EpisodeConfig(max_turns=2), breadth=1)
    assert any(p.rejected == "out_of_turns" for p in short)
    for p in short:
        assert p.rejected in {"out_of_turns", "evidence_not_shown", None}
        if p.rejected is None:
            assert p.trajectory.metrics["searches"] == 1
            assert all(shown_sentences(p.trajectory.turns[0].observation, hop) for hop in p.plan.hops)


def test_a_retriever_server_gives_the_same_demonstrations(
    real_data: Path, tiny_demos: Path, policy_tokenizer: Any
) -> None:
    planned = plan_file(real_data / SAMPLES["musique"], limit=LIMIT)
    local = play(planned.plans, LocalSearch(load_index(tiny_demos / "index")), policy_tokenizer, EpisodeConfig())
    with ServerThread(create_app(load_index(tiny_demos / "index"))) as server:
        remote = play(planned.plans, HttpSearch.from_url(server.url), policy_tokenizer, EpisodeConfig())
    assert [p.trajectory.response_ids for p in remote] == [p.trajectory.response_ids for p in local]
    assert [p.rejected for p in remote] == [p.rejected for p in local]


def test_smollm2_demonstrations(real_data: Path, tmp_path: Path) -> None:
    """The policy's own tokenizer and chat template; the warm start's reader accepts the file for that policy."""
    from agent_env.models import load_tokenizer
    from expandsearch.sft import read_demonstrations as sft_read

    job = DemoJob(inputs(real_data)[:1], str(tmp_path), "smollm2", build_index=True, limit=6)
    summary = prepare_demos(job)
    assert summary["tokenizer"] == "smollm2"
    assert summary["kept"] > 0
    tokenizer = load_tokenizer("smollm2")
    records = lines(tmp_path)
    for record in records:
        check_contract(record, tokenizer)
        prompt = tokenizer.decode(record["prompt_ids"])
        assert prompt.startswith("<|im_start|>system")
        assert prompt.endswith("<|im_start|>assistant\n")
    assert len(sft_read([tmp_path / DEMOS_FILE], tokenizer)) == len(records)
    assert len(sft_read([tmp_path / DEMOS_FILE], tokenizer, protocol="tags")) == len(records)
    with pytest.raises(ValueError, match=r"written in the tags format, but rollout\.episode\.protocol is tool_calls"):
        sft_read([tmp_path / DEMOS_FILE], tokenizer, protocol="tool_calls")


def test_tool_call_demonstrations_keep_the_contract(real_data: Path, tmp_path: Path) -> None:
    """``protocol: tool_calls``: the searches are hermes tool calls that the tool_calls parser reads, the passages
    come back in the template's tool-response turn (every token of it masked), quotes are of what those turns
    showed, and the chat messages hold them as ``tool`` messages; SFT takes the file for a tool_calls run only."""
    from agent_env.models import load_tokenizer
    from agent_env.tool_calls import chat_frames, parse_tool_call_action
    from expandsearch.sft import read_demonstrations as sft_read

    config = EpisodeConfig(protocol="tool_calls", max_turn_tokens=500, max_observation_tokens=500)
    job = DemoJob(inputs(real_data)[:1], str(tmp_path), "smollm2", build_index=True, limit=6, config=config)
    summary = prepare_demos(job)
    assert summary["protocol"] == "tool_calls"
    assert summary["kept"] > 0
    tokenizer = load_tokenizer("smollm2")
    tool_turn = chat_frames(tokenizer).tool
    for record in lines(tmp_path):
        assert record["protocol"] == "tool_calls"
        texts = [(mask, tokenizer.decode(ids, skip_special_tokens=False)) for mask, ids in runs(record)]
        assert texts[0][0] == 1
        assert texts[-1][0] == 1
        policy = [text for mask, text in texts if mask == 1]
        environment = [text for mask, text in texts if mask == 0]
        assert all(text.endswith(tool_turn.after) and "<information>" not in text for text in environment)
        assert all("</tool_call>" not in text and text.count(tool_turn.after) == 1 for text in environment)
        assert len(record["quotes"]) == len(policy)
        for turn, quotes in enumerate(record["quotes"]):
            shown = " ".join(" ".join(env.split()) for env in environment[:turn])
            assert all(" ".join(quote.split()) in shown for quote in quotes)
        for text in policy[:-1]:
            action = parse_tool_call_action(text, max_variants=3)
            assert action.kind == "search", text
            assert 1 <= len(action.queries) <= record["breadth"]
        final = parse_tool_call_action(policy[-1])
        assert final.kind == "answer"
        assert final.answer == record["golden_answers"][0]
        roles = [message["role"] for message in record["messages"]]
        assert roles[-1] == "assistant"
        assert roles.count("tool") == len(policy) - 1
        assert "<tool_call>" in record["messages"][roles.index("assistant")]["content"]
    assert len(sft_read([tmp_path / DEMOS_FILE], tokenizer, protocol="tool_calls")) == summary["kept"]
    with pytest.raises(ValueError, match="tool_calls format"):
        sft_read([tmp_path / DEMOS_FILE], tokenizer, protocol="tags")
