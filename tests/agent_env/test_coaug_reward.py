"""The co-augmentation reward estimator against exact enumeration written out independently, BM25 with the
corpus's IDF, and Dr. GRPO advantages with the side scaling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_env.coaug_reward import (
    NEGATIVE_TAG,
    POSITIVE_TAG,
    QUERY_TAG,
    SampledResponse,
    all_draws,
    all_zero,
    analyze,
    bm25_matrix,
    bm25_similarity,
    corpus_idf,
    dr_grpo_advantages,
    draw_rewards,
    gains_matrix,
    ndcg_rows,
    sample_draws,
    scale_advantages,
    score_step,
)


def brute_ndcg(scores: list[float], gains: list[float], k: int) -> float:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable: ties keep order
    dcg = sum(gains[i] / math.log2(rank + 2) for rank, i in enumerate(order[:k]))
    ideal = sum(g / math.log2(rank + 2) for rank, g in enumerate(sorted(gains, reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def brute_expectations(
    sim: list[list[float]], gains: list[list[float]], groups: list[int], k: int, pos_weight: float
) -> tuple[list[float], list[float]]:
    """Exact expectations by enumerating every draw in plain Python (no shared code with the estimator)."""
    members = [[c for c, g in enumerate(groups) if g == group] for group in range(max(groups) + 1)]
    combos = list(itertools.product(*members))
    rows, columns = len(sim), len(groups)
    ndcg = {
        combo: [brute_ndcg([sim[r][c] for c in combo], [gains[r][c] for c in combo], k) for r in range(rows)]
        for combo in combos
    }
    row_exact = [sum(ndcg[combo][r] for combo in combos) / len(combos) for r in range(rows)]
    column_exact = []
    for c in range(columns):
        with_c = [combo for combo in combos if c in combo]
        weights = [1 + pos_weight * gains[r][c] for r in range(rows)]
        conditional = [sum(ndcg[combo][r] for combo in with_c) / len(with_c) for r in range(rows)]
        column_exact.append(sum(w * v for w, v in zip(weights, conditional, strict=True)) / sum(weights))
    return row_exact, column_exact


@st.composite
def tiny_batches(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], list[int], list[list[float]], int]:
    queries = draw(st.integers(1, 2))
    rows_per_query = draw(st.integers(1, 2))
    group_sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    group_query = [draw(st.integers(0, queries - 1)) for _ in group_sizes]
    group_rel = [draw(st.sampled_from([0, 1, 2])) for _ in group_sizes]
    groups = [g for g, size in enumerate(group_sizes) for _ in range(size)]
    row_query = [q for q in range(queries) for _ in range(rows_per_query)]
    # few distinct values, so ties (and their stable order) are exercised
    sim = [[float(draw(st.integers(0, 3))) for _ in groups] for _ in row_query]
    k = draw(st.integers(1, 4))
    return row_query, groups, group_query, group_rel, sim, k


@settings(max_examples=60, deadline=None)
@given(tiny_batches(), st.sampled_from([0.0, 10.0]))
def test_all_draws_equal_exact_enumeration(
    batch: tuple[list[int], list[int], list[int], list[int], list[list[float]], int], pos_weight: float
) -> None:
    row_query, groups, group_query, group_rel, sim, k = batch
    column_query = [group_query[g] for g in groups]
    gains = gains_matrix(row_query, column_query, [group_rel[g] for g in groups])
    rows, columns = draw_rewards(np.array(sim), gains, all_draws(groups), k=k, pos_weight=pos_weight)
    row_exact, column_exact = brute_expectations(sim, gains.tolist(), groups, k, pos_weight)
    np.testing.assert_allclose(rows, row_exact, atol=1e-12)
    np.testing.assert_allclose(columns, column_exact, atol=1e-12)


def test_sampled_draws_converge_to_the_exact_values() -> None:
    rng = np.random.default_rng(0)
    groups = [g for g in range(6) for _ in range(3)]
    row_query = [0, 0, 1, 1]
    column_query = [0 if g < 3 else 1 for g in groups]
    relevance = [1.0 if g in (0, 3) else 0.0 for g in groups]
    sim = rng.normal(size=(4, len(groups)))
    gains = gains_matrix(row_query, column_query, relevance)
    exact_rows, exact_columns = draw_rewards(sim, gains, all_draws(groups))
    errors = []
    for draws in (16, 1024):
        rows, columns = draw_rewards(sim, gains, sample_draws(groups, draws, rng))
        errors.append(np.abs(np.concatenate([rows - exact_rows, columns - exact_columns])).max())
    assert errors[1] < errors[0]
    assert errors[1] < 0.05


def test_ndcg_rows_is_trec_eval_ndcg_cut() -> None:
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    gains = np.array([[0.0, 2.0, 0.0, 1.0]])
    expected = (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
    assert ndcg_rows(scores, gains, k=10)[0] == pytest.approx(expected)
    assert ndcg_rows(scores, np.zeros((1, 4)))[0] == 0.0


def test_gains_count_only_columns_sampled_for_the_rows_query() -> None:
    gains = gains_matrix(["a", "b"], ["a", "a", "b"], [1, 0, 2])
    assert gains.tolist() == [[1, 0, 0], [0, 0, 2]]


def test_bm25_uses_the_corpus_idf_and_ignores_invented_terms() -> None:
    corpus = analyze(["Aspirin reduces fever.", "Ibuprofen reduces pain.", "Fever in children."])
    idf = corpus_idf(corpus)
    documents = analyze(["aspirin fever", "zorblax zorblax fever"])
    scores = bm25_matrix(analyze(["aspirin", "zorblax", "fever"]), documents, idf)
    assert scores[0, 0] > 0
    assert scores[0, 1] == 0.0
    assert scores[1].tolist() == [0.0, 0.0]  # "zorblax" is not in the corpus: it earns nothing
    assert scores[2, 0] > scores[2, 1] > 0  # same term, the longer document is normalised down
    df = 2  # "fever" in two of three corpus documents
    assert idf["fever"] == pytest.approx(math.log(1 + (3 - df + 0.5) / (df + 0.5)))


def test_dr_grpo_advantages_are_mean_centred_not_std_divided() -> None:
    rewards = np.array([1.0, 0.0, 0.5, 0.2, 0.2, 0.2])
    advantages = dr_grpo_advantages(rewards, ["q", "q", "q", "d", "d", "d"])
    np.testing.assert_allclose(advantages, [0.5, -0.5, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
    scaled = scale_advantages(advantages, [QUERY_TAG, POSITIVE_TAG, NEGATIVE_TAG, 0, 1, 2])
    np.testing.assert_allclose(scaled, [0.5, -0.1, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
    assert not all_zero(scaled)
    assert all_zero(scaled[3:])
    with pytest.raises(ValueError, match="unknown side tags"):
        scale_advantages(advantages, [7] * 6)


def test_score_step_rewards_the_query_version_that_ranks_its_positive_first() -> None:
    corpus = ["aspirin lowers fever", "statins lower cholesterol", "vaccines prevent measles", "fever in children"]
    similarity = bm25_similarity(corpus_idf(analyze(corpus)))
    step = [
        SampledResponse(QUERY_TAG, "q", None, 0.0, "does aspirin reduce fever\n\naspirin"),
        SampledResponse(QUERY_TAG, "q", None, 0.0, "does aspirin reduce fever\n\nchildren children"),
        *[SampledResponse(POSITIVE_TAG, "q", "d1", 1.0, text) for text in ("aspirin lowers fever", "aspirin")],
        *[SampledResponse(NEGATIVE_TAG, "q", "d2", 0.0, text) for text in ("fever in children", "children")],
    ]
    scores = score_step(step, similarity, draws=64)
    assert scores.rewards.shape == scores.advantages.shape == (6,)
    assert scores.rewards[0] > scores.rewards[1]  # "aspirin" keeps the positive first; "children" pulls d2 up
    assert scores.advantages[0] > 0 > scores.advantages[1]
    assert scores.advantages[0] == pytest.approx((scores.rewards[0] - scores.rewards[1]) / 2)
    # document versions: advantages scaled by 0.2 (positive) and 0.1 (negative) around their own group's mean
    positive = scores.rewards[2:4] - scores.rewards[2:4].mean()
    np.testing.assert_allclose(scores.advantages[2:4], 0.2 * positive, atol=1e-12)
    assert not scores.skip
    same = [SampledResponse(r.tag, r.query_id, r.doc_id, r.relevance, "identical text") for r in step]
    assert score_step(same, similarity, draws=8).skip
