"""Tests for agent_env.reward: answer normalisation, EM/F1/cover-EM, answer extraction and format reward.

Agreement with HotpotQA's official ``hotpot_evaluate_v1.py`` is checked against a reference written here
independently, straight from that script's semantics.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_env.reward import (
    FormatRewardConfig,
    cover_exact_match,
    em_reward,
    exact_match,
    extract_answer,
    f1_score,
    format_reward,
    is_valid_trajectory,
    normalize_answer,
)

# --- reference: hotpot_evaluate_v1.py semantics, one gold at a time ---


def ref_normalize(s: str) -> str:
    def lower(text: str) -> str:
        return text.lower()

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_f1(prediction: str, gold: str) -> float:
    pred, truth = ref_normalize(prediction), ref_normalize(gold)
    if pred in ["yes", "no", "noanswer"] and pred != truth:
        return 0.0
    if truth in ["yes", "no", "noanswer"] and pred != truth:
        return 0.0
    pred_tokens, truth_tokens = pred.split(), truth.split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def ref_em(prediction: str, gold: str) -> float:
    return float(ref_normalize(prediction) == ref_normalize(gold))


def ref_cover(prediction: str, gold: str) -> float:
    # Sliding window over tokens: an independent way to say "gold is a whole-token span of prediction".
    pred, truth = ref_normalize(prediction).split(), ref_normalize(gold).split()
    if not truth:
        return 0.0
    windows = (pred[i : i + len(truth)] for i in range(len(pred) - len(truth) + 1))
    return float(any(window == truth for window in windows))


# --- hand-computed tables ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Theater", "theater"),  # article word removed, "the" inside a word kept
        ("another", "another"),
        ("An apple a day", "apple day"),
        ("the-cat", "thecat"),  # punctuation goes first, so "the" is no longer a word
        ("the,the", "thethe"),
        ("the the", ""),
        ("A", ""),
        ("!!!", ""),
        ("", ""),
        ("  multiple   spaces\n\tand tabs ", "multiple spaces and tabs"),
        ("Zürich", "zürich"),  # no accent folding
        ("São Paulo!", "são paulo"),
        ("1,000", "1000"),
        ("U.S.A.", "usa"),
        ("don't", "dont"),
        ("“Quoted”", "“quoted”"),  # curly quotes are not in string.punctuation
        ("Théâtre", "théâtre"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# (prediction, golds, em, f1, cover-em)
METRIC_CASES: list[tuple[str, str | list[str], float, float, float]] = [
    ("Paris", ["paris"], 1.0, 1.0, 1.0),
    ("The Paris", "Paris", 1.0, 1.0, 1.0),  # a single str gold
    ("Paris, France", ["Paris"], 0.0, 2 / 3, 1.0),
    ("theater", ["the ater"], 0.0, 0.0, 0.0),
    ("another one", ["one"], 0.0, 2 / 3, 1.0),
    ("1,000", ["1000"], 1.0, 1.0, 1.0),
    ("1000", ["1,000 people"], 0.0, 2 / 3, 0.0),
    ("1984", ["1"], 0.0, 0.0, 0.0),  # cover needs whole tokens
    ("born in 1984", ["1984"], 0.0, 0.5, 1.0),
    ("Zürich", ["zurich"], 0.0, 0.0, 0.0),
    ("ZÜRICH", ["Zürich"], 1.0, 1.0, 1.0),
    ("São Paulo", ["sao paulo", "São Paulo"], 1.0, 1.0, 1.0),
    ("São Paulo", ["sao paulo"], 0.0, 0.5, 0.0),
    ("!!!", ["!!!"], 1.0, 0.0, 0.0),  # both normalise to "": equal, but no tokens and nothing to cover
    ("the the the", ["a"], 1.0, 0.0, 0.0),
    ("", ["Paris"], 0.0, 0.0, 0.0),
    ("", [], 0.0, 0.0, 0.0),
    ("Paris", [], 0.0, 0.0, 0.0),
    ("yes", ["no"], 0.0, 0.0, 0.0),
    ("Yes.", ["yes"], 1.0, 1.0, 1.0),
    ("yes it is", ["yes"], 0.0, 0.0, 1.0),  # gold is "yes" and differs: F1 0
    ("no", ["no way"], 0.0, 0.0, 0.0),  # prediction is "no" and differs: F1 0
    ("noanswer", ["no answer"], 0.0, 0.0, 0.0),
    ("Barack Obama", ["Obama", "Barack Hussein Obama"], 0.0, 0.8, 1.0),  # max over golds
    ("cat cat", ["cat"], 0.0, 2 / 3, 1.0),  # Counter intersection counts "cat" once
    ("new york city", ["york", "new york"], 0.0, 0.8, 1.0),
]


@pytest.mark.parametrize(("prediction", "golds", "em", "f1", "cover"), METRIC_CASES)
def test_metrics_table(prediction: str, golds: str | list[str], em: float, f1: float, cover: float) -> None:
    assert exact_match(prediction, golds) == em
    assert f1_score(prediction, golds) == pytest.approx(f1)
    assert cover_exact_match(prediction, golds) == cover


def test_golds_may_be_any_sequence() -> None:
    assert exact_match("Paris", ("London", "Paris")) == 1.0
    assert exact_match("P", "Paris") == 0.0  # a str gold is one answer, not a list of letters


# --- agreement with the official script ---

ANSWER_PIECES = [
    "a", "an", "the", "The", "A", "AN", "yes", "no", "noanswer", "Yes.", "no!", ",", ".", "-", "'", "theater",
    "another", "1,000", "1000", "Zürich", "é", "cat", "Paris", "—", "“", "(", ")", "the-", "-a", "an.", "'the",
]  # fmt: skip
piece_text = st.lists(st.sampled_from(ANSWER_PIECES), max_size=8).flatmap(
    lambda pieces: st.lists(st.sampled_from([" ", "", "\n", "  "]), min_size=len(pieces), max_size=len(pieces)).map(
        lambda seps: "".join(piece + sep for piece, sep in zip(pieces, seps, strict=True))
    )
)
answer_text = st.one_of(st.text(max_size=30), piece_text, st.sampled_from(["yes", "no", "noanswer", "", "The"]))


@settings(max_examples=300, deadline=None)
@given(prediction=answer_text, gold=answer_text)
@example(prediction="the-cat", gold="thecat")  # normalisation order
@example(prediction="yes it is", gold="yes")  # yes/no rule
@example(prediction="1984", gold="1")  # whole-token cover
def test_agrees_with_official_script_single_gold(prediction: str, gold: str) -> None:
    assert normalize_answer(prediction) == ref_normalize(prediction)
    assert exact_match(prediction, [gold]) == ref_em(prediction, gold)
    assert f1_score(prediction, [gold]) == ref_f1(prediction, gold)
    assert f1_score(prediction, gold) == ref_f1(prediction, gold)
    assert cover_exact_match(prediction, [gold]) == ref_cover(prediction, gold)


@settings(max_examples=300, deadline=None)
@given(prediction=answer_text, golds=st.lists(answer_text, max_size=4))
def test_metrics_are_max_over_golds(prediction: str, golds: list[str]) -> None:
    assert exact_match(prediction, golds) == max((ref_em(prediction, g) for g in golds), default=0.0)
    assert f1_score(prediction, golds) == max((ref_f1(prediction, g) for g in golds), default=0.0)
    assert cover_exact_match(prediction, golds) == max((ref_cover(prediction, g) for g in golds), default=0.0)


# --- answer extraction and rewards ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer> Paris </answer>", "Paris"),
        ("<answer>a</answer> then <answer> b </answer>", "b"),  # the last one counts
        ("<answer> a </answer> <answer> b", "a"),  # an unclosed answer is not complete
        ("<answer> a <answer> b </answer>", "b"),
        ("<answer>\n São Paulo \n</answer>", "São Paulo"),
        ("<answer> </answer>", ""),
        ("no answer here", None),
        ("</answer>", None),
        ("<Answer> x </Answer>", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "golds", "expected"),
    [
        ("<think> x </think><answer> The Paris </answer>", ["paris"], 1.0),
        ("<answer> London </answer>", ["paris"], 0.0),
        ("<search> paris </search>", ["paris"], 0.0),
        ("<answer> paris </answer><answer> London </answer>", ["paris"], 0.0),
    ],
)
def test_em_reward(text: str, golds: list[str], expected: float) -> None:
    assert em_reward(text, golds) == expected


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        (["<search> a </search>", "<answer> b </answer>"], True),
        (["<think> x </think><search> a ## b </search>", "<search> c </search>", "<answer> b </answer>"], True),
        (["<answer> b </answer>"], True),
        ([], False),
        (["<search> a </search>"], False),
        (["<answer> b </answer>", "<answer> c </answer>"], False),
        (["<search> a </search>", "junk", "<answer> b </answer>"], False),
        (["<search></search>", "<answer> b </answer>"], False),
        (["<search> a </search>", "<answer> </answer>"], False),
    ],
)
def test_is_valid_trajectory(turns: list[str], expected: bool) -> None:
    assert is_valid_trajectory(turns) is expected


WITH_RETRIEVAL = FormatRewardConfig(retrieval_score=0.1)


@pytest.mark.parametrize(
    ("answer", "valid_format", "retrieval_hit", "config", "expected"),
    [
        (None, True, False, FormatRewardConfig(), 0.2),
        (None, True, True, FormatRewardConfig(), 0.2),  # retrieval_score defaults to 0
        (None, True, True, WITH_RETRIEVAL, 0.3),
        (None, False, False, FormatRewardConfig(), 0.0),
        (None, False, True, WITH_RETRIEVAL, 0.0),
        ("The Paris", True, False, FormatRewardConfig(), 1.0),
        ("Paris", True, True, WITH_RETRIEVAL, 1.0),
        ("paris", False, False, FormatRewardConfig(), 0.8),
        ("London", True, False, FormatRewardConfig(), 0.2),
        ("London", True, True, WITH_RETRIEVAL, 0.3),
        ("London", False, False, FormatRewardConfig(), 0.1),
        ("London", False, True, WITH_RETRIEVAL, 0.1),
        ("", False, False, FormatRewardConfig(), 0.1),
    ],
)
def test_format_reward(
    answer: str | None, valid_format: bool, retrieval_hit: bool, config: FormatRewardConfig, expected: float
) -> None:
    reward = format_reward(answer, ["Paris"], valid_format=valid_format, retrieval_hit=retrieval_hit, config=config)
    assert reward == pytest.approx(expected)


def test_format_reward_defaults() -> None:
    assert FormatRewardConfig() == FormatRewardConfig(1.0, 0.2, 0.1, 0.0)
    assert format_reward("Paris", "Paris", valid_format=True) == 1.0
