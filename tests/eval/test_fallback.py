"""eval.fallback and the fallback-scored metrics: what an untagged turn is scored as, and that EM stays strict."""

from __future__ import annotations

import pytest
from support import hand_built_trajectory

from agent_env.episode import Trajectory, TurnRecord
from eval.fallback import ANSWER_FALLBACKS, FALLBACK_MAX_WORDS, clean_turn, last_turn_answer
from eval.metrics import FALLBACK_KEYS, aggregate, example_metrics
from expandsearch.commands.eval import ANSWER_FALLBACKS as CLI_ANSWER_FALLBACKS


def test_the_first_sentence_of_the_first_line_is_the_prediction() -> None:
    assert clean_turn("The weapon is the scythe. It is long.\nMore text.") == "The weapon is the scythe."
    assert clean_turn("  Bat Masterson\n\nThe answer is: Bat Masterson") == "Bat Masterson"
    assert clean_turn("It was won by the U.S. Army team in 1990.") == "It was won by the U.S. Army team in 1990."


def test_protocol_blocks_are_dropped_and_an_unclosed_answer_keeps_its_text() -> None:
    assert clean_turn("<think> maybe Rome </think> Paris is the capital.") == "Paris is the capital."
    assert clean_turn("<search> capital of france </search>") is None  # a query is not an answer
    assert clean_turn("<information>Doc 1 Rome</information>\nParis") == "Paris"
    assert clean_turn("<answer> Beijing\n<answer> Beijing\n<answer> Be") == "Beijing"


def test_an_unclosed_reasoning_block_is_not_an_answer_and_tags_match_in_any_case() -> None:
    assert clean_turn("<think> I need to find the city where Zontun was born") is None
    assert clean_turn("Beijing <think> or was it Shanghai") == "Beijing"
    assert clean_turn("<THINK>Zontun lived there.</Think> Beijing") == "Beijing"


def test_question_echoes_and_answer_labels_are_not_the_answer() -> None:
    assert clean_turn("\nQuestion: who played bat masterson?\n\nAnswer:\n\nSam Elliott") == "Sam Elliott"
    assert clean_turn("The final answer is: Jesus Christ") == "Jesus Christ"
    assert clean_turn("Answers vary by region.") == "Answers vary by region."  # "Answer" only as a whole word
    assert clean_turn("Question: what is it?") is None
    assert clean_turn("   \n\n") is None


def test_a_loop_without_punctuation_is_cut_to_the_word_limit() -> None:
    answer = clean_turn("Step by step " * 40)
    assert answer is not None
    assert len(answer.split()) == FALLBACK_MAX_WORDS


def test_the_last_turn_that_leaves_text_is_used() -> None:
    assert last_turn_answer(["First guess.", "Second guess."]) == "Second guess."
    assert last_turn_answer(["The scythe.", "\nQuestion: what does the grim reaper carry?"]) == "The scythe."
    assert last_turn_answer(["", "<search> q </search>"]) is None
    assert last_turn_answer([]) is None


def turn(text: str, action: str = "invalid", answer: str | None = None) -> TurnRecord:
    return TurnRecord(text, action, "stop", answer=answer)


def trajectory(turns: list[TurnRecord], answer: str | None) -> Trajectory:
    return hand_built_trajectory(turns, answer)


def test_an_untagged_episode_is_scored_on_its_last_turn_apart_from_the_strict_metrics() -> None:
    episode = trajectory([turn("I do not know."), turn("The scythe.")], None)
    row = example_metrics(episode, ["scythe"], {}, answer_fallback="last-turn")
    assert (row["prediction"], row["em"], row["cover_em"], row["answered"]) == (None, 0.0, 0.0, 0.0)
    assert row["fallback_prediction"] == "The scythe."
    assert (row["fallback_used"], row["fallback_em"], row["fallback_f1"], row["fallback_cover_em"]) == (1, 1, 1, 1)


def test_a_tagged_answer_is_never_replaced_by_the_fallback() -> None:
    episode = trajectory([turn("The scythe."), turn("<answer> a sword </answer>", "answer", "a sword")], "a sword")
    row = example_metrics(episode, ["scythe"], {}, answer_fallback="last-turn")
    assert row["fallback_prediction"] is None
    assert row["fallback_used"] == 0.0
    assert (row["em"], row["fallback_em"], row["fallback_f1"]) == (0.0, 0.0, 0.0)
    assert row["answered"] == 1.0


def test_no_fallback_adds_no_keys_and_an_unknown_one_is_refused() -> None:
    episode = trajectory([turn("The scythe.")], None)
    assert not set(FALLBACK_KEYS) & set(example_metrics(episode, ["scythe"], {}))
    with pytest.raises(ValueError, match="unknown answer fallback 'first-turn'"):
        example_metrics(episode, ["scythe"], {}, answer_fallback="first-turn")


def test_aggregate_reports_the_fallback_share_and_scores() -> None:
    untagged = trajectory([turn("The scythe.")], None)
    tagged = trajectory([turn("<answer> scythe </answer>", "answer", "scythe")], "scythe")
    silent = trajectory([turn("")], None)
    rows = [
        example_metrics(episode, ["scythe"], {}, answer_fallback="last-turn") for episode in (untagged, tagged, silent)
    ]
    metrics = aggregate(rows)
    assert metrics["em"] == metrics["answered"] == pytest.approx(1 / 3)
    assert metrics["fallback_em"] == pytest.approx(2 / 3)
    assert metrics["fallback_used"] == pytest.approx(1 / 3)
    assert "fallback_em" not in aggregate([example_metrics(untagged, ["scythe"], {})])


def test_the_cli_offers_the_fallbacks_the_harness_knows() -> None:
    assert CLI_ANSWER_FALLBACKS == ANSWER_FALLBACKS
