"""NDCG@k (trec_eval's ndcg_cut, graded linear gains), Recall@k and the paired comparison."""

from __future__ import annotations

import math

import pytest

from eval.ranking import mean_metrics, ndcg_at_k, paired_comparison, per_query, recall_at_k


def test_ndcg_uses_graded_linear_gains_and_the_ideal_of_all_judgements() -> None:
    judged = {"a": 2, "b": 1, "c": 0, "z": 1}  # "z" is never retrieved: it still counts in the ideal
    ranked = ["c", "a", "x", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, judged, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(ranked, judged, 1) == 0.0  # the top document "c" is judged non-relevant
    assert ndcg_at_k(["a", "b", "z"], judged, 10) == pytest.approx(1.0)


def test_ndcg_counts_a_repeated_document_once_and_no_relevant_gives_zero() -> None:
    assert ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0


def test_recall_and_means_over_judged_queries() -> None:
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"d": 0}}
    run = {"q1": ["a", "x"], "q2": ["y"]}  # q2 misses, q3 has no relevant document and no run
    assert recall_at_k(run["q1"], qrels["q1"], 100) == 0.5
    assert recall_at_k([], qrels["q3"], 100) is None
    rows = per_query(run, qrels)
    means = mean_metrics(rows)
    assert means["n"] == 3
    assert means["recall@100"] == pytest.approx(0.25)  # q3 measures no recall
    assert means["ndcg@10"] == pytest.approx((1 / (1 + 1 / math.log2(3))) / 3)


def test_paired_comparison_detects_a_consistent_gain_and_not_noise() -> None:
    baseline = {f"q{i}": 0.5 for i in range(40)}
    better = {query: value + 0.1 for query, value in baseline.items()}
    gain = paired_comparison(baseline, better)
    assert gain["difference"] == pytest.approx(0.1)
    assert (gain["gained"], gain["lost"]) == (40, 0)
    assert gain["randomization_p"] < 0.001
    noisy = {query: value + (0.1 if i % 2 else -0.1) for i, (query, value) in enumerate(baseline.items())}
    assert paired_comparison(baseline, noisy)["randomization_p"] > 0.5
    with pytest.raises(ValueError, match="share no query"):
        paired_comparison({"a": 1.0}, {"b": 1.0})
