"""eval.metrics on hand-built trajectories: passage union, answer in passages, supporting recall, rows, aggregates."""

from __future__ import annotations

from typing import Any

import pytest
from support import hand_built_trajectory

from agent_env.episode import Trajectory, TurnRecord
from eval.metrics import aggregate, answer_in_passages, example_metrics, retrieved_passages, supporting_recall


def hit(passage_id: str, title: str = "", text: str = "") -> dict[str, Any]:
    return {"id": passage_id, "title": title, "text": text, "score": 1.0}


def search_turn(*hits_per_query: list[dict[str, Any]]) -> TurnRecord:
    queries = [f"query {index}" for index in range(len(hits_per_query))]
    return TurnRecord("<search> … </search>", "search", "stop", queries, hits_per_query=list(hits_per_query))


def answer_turn(answer: str) -> TurnRecord:
    return TurnRecord(f"<answer> {answer} </answer>", "answer", "stop", answer=answer)


def trajectory(turns: list[TurnRecord], answer: str | None, searches: int = 0, variants: int = 0) -> Trajectory:
    metrics = {"searches": float(searches), "variants_per_search": variants / searches if searches else 0.0}
    return hand_built_trajectory(turns, answer, metrics | {"valid_action_rate": 1.0})


def test_retrieved_passages_are_the_union_over_turns_and_variants_in_first_seen_order() -> None:
    first = search_turn([hit("1"), hit("2")], [hit("2"), hit("3")])
    second = search_turn([hit("3"), hit("4")])
    assert [passage["id"] for passage in retrieved_passages([first, second, answer_turn("x")])] == ["1", "2", "3", "4"]


def test_passages_without_ids_are_told_apart_by_title_and_text() -> None:
    turn = search_turn([hit("", "A", "one"), hit("", "A", "one"), hit("", "A", "two")])
    assert len(retrieved_passages([turn])) == 2


def test_answer_in_passages_uses_whole_normalised_tokens_of_title_and_text() -> None:
    passages = [hit("1", "Voyager 2", "It was launched in 1977 by NASA."), hit("2", "Jesus Christ", "A parable.")]
    assert answer_in_passages(passages, ["nasa"]) == 1.0  # case and punctuation normalised
    assert answer_in_passages(passages, ["Jesus Christ"]) == 1.0  # found in a title
    assert answer_in_passages(passages, ["197"]) == 0.0  # not a prefix of a token
    assert answer_in_passages(passages, ["Mars", "the Voyager 2"]) == 1.0  # any gold, articles dropped
    assert answer_in_passages([], ["NASA"]) == 0.0


def test_supporting_recall_prefers_ids_then_titles_else_is_not_measured() -> None:
    passages = [hit("7", "Bainnul Zontun"), hit("9", "Hamhaven")]
    assert supporting_recall(passages, {"supporting_ids": ["7", "8"], "supporting_titles": ["Hamhaven"]}) == 0.5
    assert supporting_recall(passages, {"supporting_ids": [7, 9]}) == 1.0  # ids compared as strings
    assert supporting_recall(passages, {"supporting_titles": ["  bainnul   ZONTUN ", "Kaiholt"]}) == 0.5
    assert supporting_recall(passages, {"supporting_titles": ["Hamhaven", "Hamhaven"]}) == 1.0  # distinct titles
    assert supporting_recall(passages, {}) is None
    assert supporting_recall(passages, {"supporting_ids": []}) is None
    assert supporting_recall([], {"supporting_ids": ["7"]}) == 0.0


def test_example_metrics_of_an_answered_search_episode() -> None:
    hamlet = hit("1", "Hamlet", "written by William Shakespeare")
    turns = [search_turn([hamlet], [hit("2")]), answer_turn("Shakespeare")]
    row = example_metrics(
        trajectory(turns, "Shakespeare", searches=1, variants=2),
        ["William Shakespeare"],
        {"supporting_ids": ["1", "5"]},
    )
    assert row["prediction"] == "Shakespeare"
    assert row["em"] == 0.0
    assert row["f1"] == pytest.approx(2 / 3)
    assert row["cover_em"] == 0.0
    assert row["answered"] == row["valid_action_rate"] == 1.0
    assert row["answer_in_passages"] == 1.0
    assert row["recall"] == 0.5
    assert (row["turns"], row["searches"], row["variants"]) == (2, 1, 2)
    assert row["tokens"] == 4  # policy tokens only
    assert row["context_tokens"] == 5 + 5
    assert row["termination"] == "answer"


def test_an_unanswered_episode_scores_zero_and_a_method_without_retrieval_measures_none() -> None:
    row = example_metrics(trajectory([answer_turn("")], None), ["Paris"], {"supporting_ids": ["1"]}, retrieves=False)
    assert (row["prediction"], row["em"], row["f1"], row["cover_em"], row["answered"]) == (None, 0.0, 0.0, 0.0, 0.0)
    assert row["answer_in_passages"] is None
    assert row["recall"] is None


def test_environment_retrievals_count_as_searches_and_their_passages_as_retrieved() -> None:
    retrieval = TurnRecord("", "retrieve", "environment", ["who wrote hamlet"], hits_per_query=[[hit("5", "Hamlet")]])
    row = example_metrics(
        trajectory([answer_turn("x")], "x"), ["hamlet"], {"supporting_ids": ["5"]}, environment_turns=[retrieval]
    )
    assert (row["searches"], row["variants"], row["turns"]) == (1, 1, 1)
    assert row["answer_in_passages"] == 1.0
    assert row["recall"] == 1.0


def row(**values: Any) -> dict[str, Any]:
    base = dict.fromkeys(("em", "f1", "cover_em", "answered", "valid_action_rate", "tokens", "context_tokens"), 0.0)
    return {**base, "turns": 1, "searches": 0, "variants": 0, "answer_in_passages": None, "recall": None, **values}


def test_aggregate_means_and_per_search_variants() -> None:
    rows = [
        row(em=1.0, searches=1, variants=3, answer_in_passages=1.0, recall=None),
        row(em=0.0, searches=3, variants=3, answer_in_passages=0.0, recall=0.5),
        row(em=1.0, searches=0, variants=0, answer_in_passages=0.0, recall=1.0),
    ]
    metrics = aggregate(rows)
    assert metrics["n"] == 3
    assert metrics["em"] == pytest.approx(2 / 3)
    assert metrics["searches"] == pytest.approx(4 / 3)
    assert metrics["variants_per_search"] == pytest.approx(6 / 4)  # per search, not per episode
    assert metrics["answer_in_passages"] == pytest.approx(1 / 3)
    assert metrics["recall"] == pytest.approx(0.75)  # over the rows that measure it
    assert metrics["em_when_found"] == 1.0  # the one row whose passages held the answer


def test_em_when_found_is_the_em_of_the_questions_whose_passages_held_an_answer() -> None:
    rows = [row(em=1.0, answer_in_passages=1.0), row(em=0.0, answer_in_passages=1.0), row(em=1.0)]
    assert aggregate(rows)["em_when_found"] == 0.5
    assert "em_when_found" not in aggregate([row(em=1.0, answer_in_passages=0.0)])


def test_aggregate_leaves_out_what_was_never_measured() -> None:
    metrics = aggregate([row(), row()])
    assert "answer_in_passages" not in metrics
    assert "recall" not in metrics
    assert "em_when_found" not in metrics
    assert "variants_per_search" not in metrics
    assert aggregate([]) == {}
