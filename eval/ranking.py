"""Ranking metrics over graded judgements (BEIR / trec_eval definitions) and a paired comparison of two runs.

- ``ndcg@k`` is trec_eval's ``ndcg_cut.k``: DCG = Σ_{i ≤ k} gain_i / log2(i + 1) over the ranked list, with the
  judged score as the gain (linear, graded; unjudged or score ≤ 0 gains 0), divided by the DCG of the ideal
  ordering of the query's judged scores.
- ``recall@k``: relevant documents (score > 0) in the top k over all relevant documents.

Queries are averaged over the qrels (a query the run has no list for counts 0; trec_eval would skip it, which
flatters a retriever that fails on some queries). :func:`paired_comparison` compares two runs query by query:
mean difference, queries gained / lost, a paired t-test and a two-sided sign-flip randomisation test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

Run = Mapping[str, Sequence[str]]
"""query id → ranked document ids, best first."""
Judgements = Mapping[str, Mapping[str, int]]

DEFAULT_CUTOFFS = {"ndcg": 10, "recall": 100}


def ndcg_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """trec_eval ``ndcg_cut.k`` of one ranked list; 0.0 when the query has no relevant document."""
    gains = sorted((score for score in judged.values() if score > 0), reverse=True)[:k]
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
    if ideal == 0:
        return 0.0
    # a document listed twice counts once, at its first rank (trec_eval reads a run as a set per query)
    seen: set[str] = set()
    dcg = 0.0
    rank = 0
    for doc in ranked:
        if rank >= k:
            break
        if doc in seen:
            continue
        seen.add(doc)
        dcg += max(judged.get(doc, 0), 0) / math.log2(rank + 2)
        rank += 1
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int = 100) -> float | None:
    """Share of the relevant documents in the top k; None when the query has none (left out of means)."""
    relevant = {doc for doc, score in judged.items() if score > 0}
    if not relevant:
        return None
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def per_query(run: Run, qrels: Judgements, cutoffs: Mapping[str, int] = DEFAULT_CUTOFFS) -> dict[str, dict[str, Any]]:
    """query id → ``{"ndcg@10": …, "recall@100": …}`` for every judged query (in qrels order)."""
    rows: dict[str, dict[str, Any]] = {}
    for query_id, judged in qrels.items():
        ranked = list(run.get(query_id, ()))
        rows[query_id] = {
            f"ndcg@{cutoffs['ndcg']}": ndcg_at_k(ranked, judged, cutoffs["ndcg"]),
            f"recall@{cutoffs['recall']}": recall_at_k(ranked, judged, cutoffs["recall"]),
        }
    return rows


def mean_metrics(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each metric over the queries that measure it, and ``n`` (queries)."""
    keys = sorted({key for row in rows.values() for key in row})
    means: dict[str, float] = {"n": float(len(rows))}
    for key in keys:
        values = [float(row[key]) for row in rows.values() if row.get(key) is not None]
        if values:
            means[key] = fmean(values)
    return means


def paired_comparison(
    baseline: Mapping[str, float], candidate: Mapping[str, float], *, permutations: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Candidate minus baseline over the queries both have: mean difference, gained / lost / tied counts,
    a paired t-test p and a two-sided sign-flip randomisation p (``permutations`` seeded draws)."""
    shared = [query for query in baseline if query in candidate]
    if not shared:
        raise ValueError("the two runs share no query")
    differences = [candidate[query] - baseline[query] for query in shared]
    observed = abs(fmean(differences))
    rng = random.Random(seed)
    # +1 in numerator and denominator: the observed labelling is one of the permutations (a valid p-value)
    extreme = sum(
        abs(fmean([d if rng.random() < 0.5 else -d for d in differences])) >= observed - 1e-12
        for _ in range(permutations)
    )
    return {
        "n": float(len(shared)),
        "difference": fmean(differences),
        "gained": float(sum(d > 1e-12 for d in differences)),
        "lost": float(sum(d < -1e-12 for d in differences)),
        "t_test_p": _paired_t_p(differences),
        "randomization_p": (extreme + 1) / (permutations + 1),
    }


def _paired_t_p(differences: Sequence[float]) -> float:
    """Two-sided p of a one-sample t-test of the differences against 0 (1.0 when they are all equal)."""
    from scipy import stats

    if len(differences) < 2 or max(differences) - min(differences) < 1e-15:
        return 1.0
    return float(stats.ttest_1samp(differences, 0.0).pvalue)
