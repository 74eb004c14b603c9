"""Benchmark: the co-augmentation reward estimator's error and spread against the number of draws.

    .venv/bin/python benchmarks/coaug_reward_variance.py [--repeats 40] [--seed 0]

Batches are built from SciFact train queries as in the reference: per query 1 query prompt, its positives (up to
5, from the train qrels) and negatives, ``n`` sampled versions of every prompt. No LLM runs here: a version is the
original text plus 12 words drawn at random from the query's and a random document's words, a stand-in for sampled
augmentations that spreads BM25 similarities the way differing augmentations do. Similarity is BM25 with the whole
corpus's IDF (``agent_env.coaug_reward``). Negatives are *hard* (the best-scoring non-relevant documents of the
query under BM25): with the reference's random negatives a SciFact positive nearly always ranks first in the batch,
every NDCG is 1 and there is no variance to measure (``--negatives random`` shows it).

Two batches:

- *tiny* (2 queries, 2 positives + 3 negatives each, n = 3: 3^10 = 59,049 draws) — the exact rewards are
  enumerable, so the table gives the mean absolute error against them;
- *reference-sized* (4 queries, 5 positives + 10 negatives, n = 5; 5^60 draws) — the table gives the mean
  standard deviation of the estimate over ``--repeats`` seeds, and the reference's own draw count for it.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent_env.coaug_reward import (
    all_draws,
    analyze,
    bm25_matrix,
    corpus_idf,
    draw_rewards,
    gains_matrix,
    reference_draw_count,
    sample_draws,
)
from data_prep.beir import BeirTask, load_beir, relevant
from data_prep.samples import sample_file

DRAW_COUNTS = (1, 4, 16, 64, 256, 1024)


@dataclass
class Batch:
    similarity: np.ndarray
    gains: np.ndarray
    groups: list[int]


def build_batch(
    task: BeirTask,
    idf: dict[str, float],
    rng: random.Random,
    *,
    queries: int,
    positives: int,
    negatives: int,
    versions: int,
    hard: bool,
    analysed: list[list[str]],
) -> Batch:
    by_id = {passage.id: passage for passage in task.corpus}
    chosen = rng.sample([q for q in task.qrels if relevant(task.qrels[q])], queries)
    row_texts: list[str] = []
    row_query: list[str] = []
    column_texts: list[str] = []
    column_query: list[str] = []
    column_rel: list[float] = []
    groups: list[int] = []
    for query_id in chosen:
        query = task.queries[query_id]
        pos = sorted(relevant(task.qrels[query_id]))[:positives]
        neg = _negatives(task, query_id, negatives, rng, idf, analysed if hard else None)
        row_texts += [_version(query, query, task, rng) for _ in range(versions)]
        row_query += [query_id] * versions
        for doc_id in pos + neg:
            original = f"{by_id[doc_id].title}. {by_id[doc_id].text}"
            group = len(set(groups))
            for _ in range(versions):
                column_texts.append(_version(original, query, task, rng))
                column_query.append(query_id)
                column_rel.append(float(task.qrels[query_id].get(doc_id, 0)))
                groups.append(group)
    similarity = bm25_matrix(analyze(row_texts), analyze(column_texts), idf)
    return Batch(similarity, gains_matrix(row_query, column_query, column_rel), groups)


def _negatives(
    task: BeirTask,
    query_id: str,
    count: int,
    rng: random.Random,
    idf: dict[str, float],
    analysed: list[list[str]] | None,
) -> list[str]:
    judged = task.qrels[query_id]
    if analysed is None:
        return rng.sample([p.id for p in task.corpus if p.id not in judged], count)
    scores = bm25_matrix(analyze([task.queries[query_id]]), analysed, idf, k1=0.9, b=0.4)[0]
    ranked = [task.corpus[int(row)].id for row in np.argsort(-scores, kind="stable")]
    return [doc for doc in ranked if doc not in judged][:count]


def _version(original: str, query: str, task: BeirTask, rng: random.Random) -> str:
    other = rng.choice(task.corpus)
    pool = (query + " " + other.text).split()
    return original + "\n\n" + " ".join(rng.choice(pool) for _ in range(12))


def estimates(batch: Batch, draws: int, seed: int) -> np.ndarray:
    rows, columns = draw_rewards(
        batch.similarity, batch.gains, sample_draws(batch.groups, draws, np.random.default_rng(seed))
    )
    return np.concatenate([rows, columns])


def error_table(batch: Batch, repeats: int) -> list[str]:
    exact_rows, exact_columns = draw_rewards(batch.similarity, batch.gains, all_draws(batch.groups))
    exact = np.concatenate([exact_rows, exact_columns])
    rows = exact_rows.size
    lines = ["| draws | mean abs error, queries | mean abs error, documents | max abs error |", "|---:|---:|---:|---:|"]
    for draws in DRAW_COUNTS:
        errors = np.stack([np.abs(estimates(batch, draws, seed) - exact) for seed in range(repeats)])
        lines.append(
            f"| {draws} | {errors[:, :rows].mean():.4f} | {errors[:, rows:].mean():.4f} | {errors.max():.4f} |"
        )
    return lines


def spread_table(batch: Batch, repeats: int, reference: int) -> list[str]:
    rows = batch.similarity.shape[0]
    lines = ["| draws | mean std, queries | mean std, documents |", "|---:|---:|---:|"]
    for draws in sorted({*DRAW_COUNTS, reference}):
        values = np.stack([estimates(batch, draws, seed) for seed in range(repeats)])
        spread = values.std(axis=0)
        mark = " (reference)" if draws == reference else ""
        lines.append(f"| {draws}{mark} | {spread[:rows].mean():.4f} | {spread[rows:].mean():.4f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", choices=["hard", "random"], default="hard")
    args = parser.parse_args(argv)
    task = load_beir(sample_file("beir/scifact"), "train")
    analysed = analyze([f"{p.title}\n{p.text}" for p in task.corpus])
    idf = corpus_idf(analysed)
    rng = random.Random(args.seed)
    hard = args.negatives == "hard"
    tiny = build_batch(task, idf, rng, queries=2, positives=2, negatives=3, versions=3, hard=hard, analysed=analysed)
    print(f"tiny batch: {tiny.similarity.shape[0]} query rows, {tiny.similarity.shape[1]} document columns, "
          f"{3 ** (max(tiny.groups) + 1)} draws enumerated")  # fmt: skip
    print("\n".join(error_table(tiny, args.repeats)))
    big = build_batch(task, idf, rng, queries=4, positives=5, negatives=10, versions=5, hard=hard, analysed=analysed)
    responses = big.similarity.shape[0] + big.similarity.shape[1]
    reference = reference_draw_count(responses, big.similarity.shape[0])
    print(f"\nreference-sized batch: {big.similarity.shape[0]} query rows, {big.similarity.shape[1]} document columns")
    print("\n".join(spread_table(big, args.repeats, reference)))


if __name__ == "__main__":
    main()
