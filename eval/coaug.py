"""Co-augmentation evaluation on a BEIR task: NDCG@10 and Recall@100 per augmentation condition.

A *condition* is a retriever (an index directory over the original or the augmented corpus) and the queries it
is asked (original, or combined with their augmentations, ``agent_env.augment.combine_query``)::

    none            original index,  original queries
    query only      original index,  augmented queries
    documents only  augmented index, original queries
    both            augmented index, augmented queries

Each condition is scored per query (``eval.ranking``); every condition is compared with ``none`` query by query
(mean difference, gained / lost, paired t-test and randomisation p). ``results.json`` holds the metrics, the
comparisons and what was evaluated; ``results.md`` the table; ``per_query.jsonl`` every query's scores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent_env.augment import combine_query
from data_prep.beir import BeirTask
from eval.ranking import mean_metrics, paired_comparison, per_query

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PER_QUERY = "per_query.jsonl"
BASELINE = "none"
METRICS = ("ndcg@10", "recall@100")


@dataclass(frozen=True)
class Condition:
    """One row of the table: which index answers which queries."""

    name: str
    index: str
    query_augmentations: Mapping[str, Mapping[str, Any]] | None = None
    """id → augmentation record (``data_prep.augmentation``); None: the original queries."""


def conditions(
    index: str, augmented_index: str | None, query_augmentations: Mapping[str, Mapping[str, Any]] | None
) -> list[Condition]:
    """The conditions the given inputs allow, ``none`` first."""
    found = [Condition(BASELINE, index)]
    if query_augmentations is not None:
        found.append(Condition("query only", index, query_augmentations))
    if augmented_index is not None:
        found.append(Condition("documents only", augmented_index))
        if query_augmentations is not None:
            found.append(Condition("both", augmented_index, query_augmentations))
    return found


def condition_queries(task: BeirTask, condition: Condition) -> tuple[list[str], list[str], int]:
    """(query ids, texts the retriever gets, how many carry an augmentation) for ``condition``."""
    ids = list(task.queries)
    records = condition.query_augmentations
    if records is None:
        return ids, [task.queries[query_id] for query_id in ids], 0
    missing = [query_id for query_id in ids if query_id not in records]
    if missing:
        raise ValueError(
            f"query augmentations lack {len(missing)} of the {len(ids)} {task.split} queries (first: {missing[0]!r})"
        )
    answers = [records[query_id].get("answer") for query_id in ids]
    texts = [
        combine_query(task.queries[query_id], answer, "sparse") for query_id, answer in zip(ids, answers, strict=True)
    ]
    return ids, texts, sum(bool(answer) for answer in answers)


def retrieve(
    task: BeirTask, condition: Condition, *, topk: int = 100, device: str | None = None
) -> tuple[dict[str, list[str]], int]:
    """(query id → the top ``topk`` document ids, how many queries carried an augmentation) for ``condition``."""
    from retriever_server.index_dir import load_index

    retriever = load_index(condition.index, device=device)
    ids, texts, augmented = condition_queries(task, condition)
    hits = retriever.batch_search(texts, topk)
    return {query_id: [hit.id for hit in found] for query_id, found in zip(ids, hits, strict=True)}, augmented


def evaluate_conditions(
    task: BeirTask, chosen: Sequence[Condition], *, topk: int = 100, device: str | None = None
) -> dict[str, Any]:
    """Retrieve and score every condition; returns what ``results.json`` holds (plus per-query rows)."""
    from retriever_server.index_dir import read_manifest

    results: dict[str, Any] = {}
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for condition in chosen:
        manifest = read_manifest(condition.index)
        run, augmented = retrieve(task, condition, topk=topk, device=device)
        rows[condition.name] = per_query(run, task.qrels)
        results[condition.name] = {
            **mean_metrics(rows[condition.name]),
            "index": str(Path(condition.index).resolve()),
            "kind": manifest["kind"],
            "bm25": manifest.get("bm25"),
            "encoder": manifest.get("dense", {}).get("encoder"),
            "queries_augmented": augmented,
        }
    comparisons = {
        name: {
            metric: paired_comparison(_metric(rows[BASELINE], metric), _metric(rows[name], metric))
            for metric in METRICS
        }
        for name in rows
        if name != BASELINE
    }
    return {
        "task": task.name,
        "split": task.split,
        "queries": len(task.queries),
        "documents": len(task.corpus),
        "topk": topk,
        "results": results,
        "paired_vs_none": comparisons,
        "per_query": rows,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _metric(rows: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, float]:
    return {query_id: float(row[metric]) for query_id, row in rows.items() if row.get(metric) is not None}


def results_table(results: Mapping[str, Any]) -> str:
    """The markdown table: one row per condition, with the paired NDCG@10 comparison against ``none``."""
    lines = [
        "| condition | retriever | queries | NDCG@10 | Recall@100 | ΔNDCG@10 vs none | gained / lost | p (t-test) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, metrics in results["results"].items():
        retriever = metrics["kind"] + (
            f" k1={metrics['bm25']['k1']} b={metrics['bm25']['b']}"
            if metrics.get("bm25") and "k1" in metrics["bm25"]
            else ""
        )
        if metrics.get("encoder"):
            retriever += f" {metrics['encoder']}"
        paired = results["paired_vs_none"].get(name, {}).get("ndcg@10")
        delta = f"{paired['difference']:+.4f}" if paired else "-"
        counts = f"{paired['gained']:.0f} / {paired['lost']:.0f}" if paired else "-"
        p = f"{paired['t_test_p']:.3g}" if paired else "-"
        lines.append(
            f"| {name} | {retriever} | {metrics['n']:.0f} | {metrics['ndcg@10']:.4f} | "
            f"{metrics.get('recall@100', float('nan')):.4f} | {delta} | {counts} | {p} |"
        )
    note = f"{results['task']} {results['split']}: {results['queries']} queries, {results['documents']} documents."
    return "\n".join([*lines, "", note])


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``results.json`` (without per-query rows), ``results.md`` and ``per_query.jsonl``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / RESULTS_JSON, "md": out / RESULTS_MD, "per_query": out / PER_QUERY}
    with paths["per_query"].open("w", encoding="utf-8") as handle:
        for condition, rows in results["per_query"].items():
            for query_id, row in rows.items():
                handle.write(json.dumps({"condition": condition, "id": query_id, **row}) + "\n")
    paths["md"].write_text(results_table(results) + "\n", encoding="utf-8")
    summary = {key: value for key, value in results.items() if key != "per_query"}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")  # last: marks a finished run
    return paths
