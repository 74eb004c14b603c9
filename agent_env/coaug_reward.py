"""The co-augmentation reward: a batch-level NDCG@10 estimate for every sampled query and document augmentation.

One training step holds, per training query, ``n`` augmentations of the query (the *rows*) and ``n``
augmentations of each of its sampled documents (the *columns*: positives from its train qrels and random
negatives). A column *group* is one (query, document) prompt; its ``n`` columns are its sampled versions.

1. Similarity of every row with every column (:func:`bm25_matrix` with the whole corpus's IDF, so a term the
   corpus lacks scores 0 and invented words earn nothing; or :func:`dense_matrix`).
2. Relevance ``gains[r, c]``: the qrels score of column ``c``'s document for row ``r``'s query, counted only for
   columns sampled for that same query (:func:`gains_matrix`); documents of other queries are in-batch negatives.
3. A *draw* picks one column per group (:func:`sample_draws`; :func:`all_draws` enumerates them all). For each
   draw every row is scored by NDCG@10 of its ranking of the drawn columns (:func:`ndcg_rows`).
4. A row's reward is its mean NDCG over the draws; a column's is the mean NDCG of the rows that ranked it, over
   the draws that drew it, each row weighted ``1 + pos_weight · gains[r, c]`` (its own query's positives count
   11 times at the reference's ``pos_weight = 10``) — :func:`draw_rewards`.
5. Advantages (:func:`dr_grpo_advantages`): per prompt group, reward minus the group mean, *not* divided by the
   std (Dr. GRPO); document advantages scaled by 0.2 (positives) / 0.1 (negatives) (:func:`scale_advantages`);
   a step whose advantages are all zero carries no signal (:func:`all_zero`).

Everything here is a pure function of numpy arrays; shapes are in the docstrings (Q rows, D columns, G groups,
T draws). With :func:`all_draws` the estimate is exact; ``docs/coaugmentation.md`` reports its variance
against the number of sampled draws.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

QUERY_TAG, POSITIVE_TAG, NEGATIVE_TAG = 0, 1, 2
"""Which side a sampled response is on: a query augmentation, a positive or a negative document's."""
SIDE_SCALES = {QUERY_TAG: 1.0, POSITIVE_TAG: 0.2, NEGATIVE_TAG: 0.1}
"""The reference's advantage scaling by side."""


# --- similarity -------------------------------------------------------------------------------------------------


def analyze(texts: Sequence[str], language: str = "english") -> list[list[str]]:
    """Our BM25 analyzer (``retriever_server.bm25``'s: bm25s' tokenizer, English stop-words, Snowball stemming)."""
    import bm25s
    import Stemmer

    if not texts:
        return []
    tokens = bm25s.tokenize(
        list(texts), stopwords="en", stemmer=Stemmer.Stemmer(language), show_progress=False, return_ids=False
    )
    return [list(row) for row in tokens]


def corpus_idf(documents: Sequence[Sequence[str]]) -> dict[str, float]:
    """Lucene's IDF, ``log(1 + (N - df + 0.5) / (df + 0.5))``, of every term of the analysed corpus (N docs)."""
    frequency: Counter[str] = Counter()
    for tokens in documents:
        frequency.update(set(tokens))
    total = len(documents)
    return {term: math.log(1 + (total - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}


def bm25_matrix(
    queries: Sequence[Sequence[str]],
    documents: Sequence[Sequence[str]],
    idf: Mapping[str, float],
    *,
    k1: float = 1.2,
    b: float = 0.75,
    avgdl: float | None = None,
) -> np.ndarray:
    """``(Q, D)`` BM25 scores of analysed queries against analysed documents with a fixed IDF table.

    score(q, d) = Σ_{t ∈ q} qf(t) · idf(t) · f(t, d)·(k1 + 1) / (f(t, d) + k1·(1 - b + b·|d| / avgdl)); terms
    missing from ``idf`` score 0. ``avgdl`` defaults to the mean length of ``documents`` (the reference's batch).
    """
    lengths = np.array([len(tokens) for tokens in documents], dtype=np.float64)
    mean_length = avgdl if avgdl is not None else (float(lengths.mean()) if len(lengths) and lengths.mean() else 1.0)
    norms = k1 * (1 - b + b * lengths / mean_length)
    counts = [Counter(tokens) for tokens in documents]
    scores = np.zeros((len(queries), len(documents)), dtype=np.float64)
    for row, query in enumerate(queries):
        for term, qf in Counter(query).items():
            weight = idf.get(term, 0.0)
            if weight == 0.0:
                continue
            for column, document in enumerate(counts):
                f = document.get(term, 0)
                if f:
                    scores[row, column] += qf * weight * f * (k1 + 1) / (f + norms[column])
    return scores


def dense_matrix(query_embeddings: np.ndarray, document_embeddings: np.ndarray) -> np.ndarray:
    """``(Q, D)`` inner products of ``(Q, dim)`` query and ``(D, dim)`` document embeddings."""
    return np.asarray(query_embeddings, dtype=np.float64) @ np.asarray(document_embeddings, dtype=np.float64).T


# --- relevance and draws ----------------------------------------------------------------------------------------


def gains_matrix(
    row_query: Sequence[Any], column_query: Sequence[Any], column_relevance: Sequence[float]
) -> np.ndarray:
    """``(Q, D)`` gains: ``column_relevance[c]`` where column ``c`` was sampled for row ``r``'s query, else 0.

    ``row_query`` ``(Q,)`` and ``column_query`` ``(D,)`` name the training query of each row / column;
    ``column_relevance`` ``(D,)`` is the qrels score of the column's document for its own query (0: a negative).
    """
    rows = np.asarray(row_query, dtype=object)[:, None]
    columns = np.asarray(column_query, dtype=object)[None, :]
    return np.where(rows == columns, np.asarray(column_relevance, dtype=np.float64)[None, :], 0.0)


def group_members(column_group: Sequence[int]) -> list[np.ndarray]:
    """The columns of each group ``0..G-1`` (``column_group`` ``(D,)`` gives each column's group)."""
    groups = np.asarray(column_group)
    count = int(groups.max()) + 1 if len(groups) else 0
    members = [np.flatnonzero(groups == group) for group in range(count)]
    if any(len(found) == 0 for found in members):
        raise ValueError("column groups must be numbered 0..G-1 with every group non-empty")
    return members


def sample_draws(column_group: Sequence[int], draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, G)`` column indices: ``draws`` independent uniform choices of one column per group."""
    members = group_members(column_group)
    return np.stack([rng.choice(found, size=draws) for found in members], axis=1)


def all_draws(column_group: Sequence[int]) -> np.ndarray:
    """``(Π group sizes, G)``: every way of choosing one column per group, each once (exact enumeration)."""
    members = group_members(column_group)
    return np.array(list(itertools.product(*members)), dtype=np.int64).reshape(-1, len(members))


# --- the estimator ----------------------------------------------------------------------------------------------


def ndcg_rows(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> np.ndarray:
    """``(Q,)`` NDCG@k of each row's ranking of its ``(Q, m)`` scores, with ``(Q, m)`` gains (0 with no gain).

    Ties keep column order (a stable sort), so the value is a function of the inputs alone."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, min(k, scores.shape[1]) + 2))
    dcg = (np.take_along_axis(gains, order, axis=1) * discounts).sum(axis=1)
    ideal = (-np.sort(-gains, axis=1)[:, :k] * discounts).sum(axis=1)
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def draw_rewards(
    similarity: np.ndarray, gains: np.ndarray, draws: np.ndarray, *, k: int = 10, pos_weight: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of ``(Q,)`` rows and ``(D,)`` columns from a ``(Q, D)`` similarity, ``(Q, D)`` gains and ``(T, G)``
    draws (column indices, one per group).

    row reward = mean over draws of its NDCG@k over the drawn columns; column reward = Σ ndcg_r · w_rc / Σ w_rc
    over the (row, draw) pairs that drew it, ``w_rc = 1 + pos_weight · gains[r, c]``. A column no draw picked
    gets 0. With :func:`all_draws` these are the exact expectations."""
    rows, columns = similarity.shape
    row_total = np.zeros(rows)
    column_total = np.zeros(columns)
    column_weight = np.zeros(columns)
    weights = 1.0 + pos_weight * gains
    for drawn in draws:
        ndcg = ndcg_rows(similarity[:, drawn], gains[:, drawn], k)
        row_total += ndcg
        np.add.at(column_total, drawn, (ndcg[:, None] * weights[:, drawn]).sum(axis=0))
        np.add.at(column_weight, drawn, weights[:, drawn].sum(axis=0))
    row_rewards = row_total / max(len(draws), 1)
    column_rewards = np.divide(column_total, column_weight, out=np.zeros(columns), where=column_weight > 0)
    return row_rewards, column_rewards


def reference_draw_count(responses: int, rows: int) -> int:
    """The reference's number of draws for a step of ``responses`` sampled responses and ``rows`` query rows."""
    return max(responses * 64 // max(rows, 1) // 2, 1)


# --- advantages -------------------------------------------------------------------------------------------------


def dr_grpo_advantages(rewards: np.ndarray, groups: Sequence[Any]) -> np.ndarray:
    """``(N,)`` advantages: each reward minus its prompt group's mean (no division by the group's std).
    ``groups`` ``(N,)`` holds any hashable group key per response (a prompt id, a (query, document) pair)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    members: dict[Any, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    advantages = np.empty_like(rewards)
    for indices in members.values():
        advantages[indices] = rewards[indices] - rewards[indices].mean()
    return advantages


def scale_advantages(
    advantages: np.ndarray, tags: Sequence[int], scales: Mapping[int, float] = SIDE_SCALES
) -> np.ndarray:
    """``(N,)`` advantages times the scale of each response's side tag (``QUERY_TAG`` / ``POSITIVE_TAG`` / …)."""
    unknown = set(tags) - set(scales)
    if unknown:
        raise ValueError(f"unknown side tags {sorted(unknown)}; known: {sorted(scales)}")
    return np.asarray(advantages, dtype=np.float64) * np.array([scales[tag] for tag in tags])


def all_zero(advantages: np.ndarray, tolerance: float = 1e-12) -> bool:
    """Whether a step carries no signal (every advantage zero): the reference skips such steps."""
    return bool(np.all(np.abs(np.asarray(advantages)) <= tolerance))


# --- one training step ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampledResponse:
    """One sampled augmentation of a training step, as the batch-level reward needs to see it."""

    tag: int
    """``QUERY_TAG``, ``POSITIVE_TAG`` or ``NEGATIVE_TAG``."""
    query_id: str
    """The training query the prompt was sampled for."""
    doc_id: str | None
    """The document augmented (None for a query)."""
    relevance: float
    """The document's qrels score for ``query_id`` (0 for negatives and queries)."""
    text: str
    """What the reward scores: ``agent_env.augment.training_text(original, answer)``."""


@dataclass(frozen=True)
class StepScores:
    """Rewards and advantages of a step's responses, in their order, and whether the step carries any signal."""

    rewards: np.ndarray
    """``(N,)``: a query version's mean NDCG@10, a document version's weighted mean NDCG (:func:`draw_rewards`)."""
    advantages: np.ndarray
    """``(N,)``: Dr. GRPO per prompt, scaled by side (:data:`SIDE_SCALES`)."""
    skip: bool
    """True when every advantage is zero (the reference skips the update)."""


Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""``(query texts (Q,), document texts (D,)) -> (Q, D)`` similarity."""


def bm25_similarity(idf: Mapping[str, float], *, k1: float = 1.2, b: float = 0.75) -> Similarity:
    """BM25 with a fixed (whole-corpus) IDF over our analyzer; the batch's mean document length."""

    def similarity(queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        return bm25_matrix(analyze(queries), analyze(documents), idf, k1=k1, b=b)

    return similarity


def dense_similarity(
    encode_queries: Callable[[Sequence[str]], np.ndarray], encode_documents: Callable[[Sequence[str]], np.ndarray]
) -> Similarity:
    """Inner products of encoder embeddings (e.g. ``retriever_server.dense.Encoder.encode_queries`` / ``_passages``)."""

    def similarity(queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        return dense_matrix(encode_queries(queries), encode_documents(documents))

    return similarity


def score_step(
    responses: Sequence[SampledResponse],
    similarity: Similarity,
    *,
    draws: int | None = None,
    rng: np.random.Generator | None = None,
    k: int = 10,
    pos_weight: float = 10.0,
) -> StepScores:
    """The batch-level reward of one step: rows are the query responses, columns the document responses, a
    column group (and a GRPO group) is one (query, document) prompt, a query's GRPO group its own prompt.
    ``draws`` defaults to the reference's count (:func:`reference_draw_count`)."""
    rows = [index for index, response in enumerate(responses) if response.tag == QUERY_TAG]
    columns = [index for index, response in enumerate(responses) if response.tag != QUERY_TAG]
    rewards = np.zeros(len(responses))
    if rows and columns:
        keys = [(responses[index].query_id, responses[index].doc_id) for index in columns]
        group_of = {key: number for number, key in enumerate(dict.fromkeys(keys))}
        groups = [group_of[key] for key in keys]
        matrix = similarity([responses[i].text for i in rows], [responses[i].text for i in columns])
        gains = gains_matrix(
            [responses[i].query_id for i in rows],
            [responses[i].query_id for i in columns],
            [responses[i].relevance for i in columns],
        )
        count = draws if draws is not None else reference_draw_count(len(responses), len(rows))
        sampled = sample_draws(groups, count, rng if rng is not None else np.random.default_rng(0))
        row_rewards, column_rewards = draw_rewards(matrix, gains, sampled, k=k, pos_weight=pos_weight)
        rewards[rows] = row_rewards
        rewards[columns] = column_rewards
    prompt_groups = [(response.query_id, response.doc_id) for response in responses]
    advantages = scale_advantages(dr_grpo_advantages(rewards, prompt_groups), [r.tag for r in responses])
    return StepScores(rewards, advantages, all_zero(advantages))
