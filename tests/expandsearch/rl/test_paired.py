"""The question-by-question comparison of two evaluations in the main job's summary: gains, losses, sign test."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from expandsearch.rl.evaluation import paired_difference, sign_test_p
from expandsearch.rl.report import summary_table


@pytest.mark.parametrize(("wins", "losses"), [(8, 1), (1, 8), (27, 22), (12, 0), (3, 3), (0, 1)])
def test_the_sign_test_is_the_exact_two_sided_binomial_test(wins: int, losses: int) -> None:
    expected = binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
    assert sign_test_p(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_no_discordant_question_is_no_evidence() -> None:
    assert sign_test_p(0, 0) == 1.0


def test_gains_and_losses_count_only_the_questions_both_evaluations_answered() -> None:
    before = {"q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 1.0, "q5": 0.0}
    after = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 0.0, "q6": 1.0}  # q5 and q6 are in one evaluation only
    comparison = paired_difference(before, after)
    assert comparison == {"difference": pytest.approx(0.25), "gained": 2, "lost": 1, "sign_test_p": 1.0}


def test_evaluations_of_different_questions_cannot_be_paired() -> None:
    with pytest.raises(ValueError, match="share no question"):
        paired_difference({"q1": 1.0}, {"q2": 1.0})


def test_the_summary_table_states_each_comparison() -> None:
    evaluation = {"metrics": {"em": 0.5, "questions": 4.0}, "em_by_type": {"bridge": 0.5}}
    paired = {"after RL vs warm start": {"difference": 0.25, "gained": 9, "lost": 1, "sign_test_p": 0.0214}}
    text = summary_table({"evaluations": {"warm start": evaluation, "after RL": evaluation}, "paired": paired})
    assert "after RL vs warm start: EM +0.250 (9 questions gained, 1 lost; sign test p = 0.021)" in text
