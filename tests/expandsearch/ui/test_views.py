"""``expandsearch.ui.views``: one turn view from a live record or a trace turn."""

from __future__ import annotations

from dataclasses import asdict

from agent_env.episode import TurnRecord
from eval.records import compact_trace
from expandsearch.ui.views import observation_kind, thinking, turn_view, variant_views


def hit(passage_id: str, title: str = "T", text: str = "x") -> dict[str, object]:
    return {"id": passage_id, "title": title, "text": text, "score": 1.0}


def test_thinking_takes_every_think_block_and_an_unclosed_last_one() -> None:
    assert thinking("<think> a </think> <search> q </search>") == ["a"]
    assert thinking("<think>one</think><think> two") == ["one", "two"]
    assert thinking("no thoughts <think> </think>") == []


def test_passages_say_which_variants_found_them() -> None:
    views = variant_views(["q1", "q2", "q3"], [[hit("a"), hit("b")], [hit("b"), hit("c")]], None)
    assert [[h["id"] for h in view["hits"]] for view in views] == [["a", "b"], ["b", "c"], []]
    assert views[0]["hits"][1]["found_by"] == [0, 1]
    assert not views[0]["hits"][1]["repeat"]
    assert views[1]["hits"][0]["found_by"] == [0, 1]
    assert views[1]["hits"][0]["repeat"]
    assert views[1]["hits"][1]["found_by"] == [1]
    assert not views[2]["searched"], "a written variant without hits was not run"


def test_what_the_observation_is() -> None:
    assert observation_kind({"action": "invalid"}) == "feedback"
    assert observation_kind({"action": "search", "search_error": "down"}) == "search_failed"
    assert (
        observation_kind({"action": "search", "squeezer_fell_back": True, "squeezer_error": "timeout"})
        == "raw_passages"
    )
    assert observation_kind({"action": "search", "squeezer_fell_back": False, "squeezer_error": None}) == "summary"
    assert observation_kind({"action": "search", "squeezer_error": "timeout"}) == "raw_passages"  # a trace turn


def test_a_trace_turn_views_as_its_live_record_with_texts_from_the_index() -> None:
    record = TurnRecord(
        "<think> go </think><search> a ## b </search>",
        "search",
        "stop",
        ["a", "b"],
        hits_per_query=[[hit("1", "One", "first")], [hit("1", "One", "first"), hit("2", "Two", "second")]],
        observation="summary text",
        policy_tokens=12,
        observation_tokens=30,
        generation_s=0.5,
    )
    texts = {"1": "first", "2": "second"}
    live = turn_view(asdict(record), 0)
    traced = turn_view(compact_trace([record])[0], 0, texts.get)
    assert traced == live
    without_index = turn_view(compact_trace([record])[0], 0)
    assert all(h["text"] is None for view in without_index["variants"] for h in view["hits"])
