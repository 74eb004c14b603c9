"""``expandsearch demo``: the main job at this stage of the project, end to end on CPU in seconds.

Generates a synthetic world, indexes it with BM25, runs the scripted expert agent through the action
protocol and the rewards on the held-out test questions — once writing several query variants per
search, once a single query per search (Search-R1 style) — and prints exact match and
supporting-passage recall for both, per question type. Writes ``summary.json`` and sample transcripts
into the run directory. (The trainer replaces the expert with a learned policy.)
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

HELP = "run the scripted expert agent on a synthetic world: single-query vs multi-variant search"

MODES = {"1q": 1, "3v": 3}
"""Search modes compared: label → query variants per search (1q: one query per search, Search-R1 style;
3v: up to three variants per search, ExpandSearch style)."""
QUESTION_TYPES = ("single_hop", "bridge", "three_hop", "comparison")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--size", default="small", help="world size: tiny, demo, small or medium (default small)")
    parser.add_argument("--topk", type=int, default=3, help="passages retrieved per query variant (default 3)")
    parser.add_argument("--max-turns", type=int, default=4, help="turns per episode, answer included (default 4)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test questions")


def run(args: argparse.Namespace) -> int:
    from data_prep.expert import run_expert
    from data_prep.synthetic import WORLD_SIZES, WorldLexicon, generate_world, write_world
    from retriever_server.bm25 import BM25Index

    if args.size not in WORLD_SIZES:
        raise ValueError(f"unknown --size {args.size!r}; choose one of {', '.join(WORLD_SIZES)}")
    if args.topk < 1 or args.max_turns < 1:
        raise ValueError("--topk and --max-turns must be at least 1")
    out = Path(args.out)
    started = time.perf_counter()
    world = generate_world(replace(WORLD_SIZES[args.size], seed=args.seed))
    write_world(world, out / "world")
    index = BM25Index.build(world.passages)
    index.save(out / "index")
    test = world.questions["test"][: args.limit]
    results = {
        mode: run_expert(
            test, index, WorldLexicon.of(world), max_variants=variants, topk=args.topk, max_turns=args.max_turns
        )
        for mode, variants in MODES.items()
    }
    summary = {
        "world": {"size": args.size, "seed": args.seed, "passages": len(world.passages), "test_questions": len(test)},
        "settings": {"topk": args.topk, "max_turns": args.max_turns, "variants": MODES},
        "results": {mode: summarise(mode_results) for mode, mode_results in results.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_transcripts(results, out / "transcripts.jsonl", per_mode=5)
    print_table(summary)
    print(f"\nwrote {out / 'summary.json'} and {out / 'transcripts.jsonl'} in {summary['seconds']} s")
    return 0


def summarise(results: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Mean metrics per question type, and over all questions."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for result in results:
        groups[result.example.metadata["type"]].append(result)
        groups["all"].append(result)
    return {qtype: _means(members) for qtype, members in groups.items()}


def _means(results: Sequence[Any]) -> dict[str, float]:
    n = len(results)
    searches = [count for result in results for count in result.variants_per_search]
    return {
        "questions": n,
        "exact_match": round(sum(r.exact_match for r in results) / n, 4),
        "f1": round(sum(r.f1 for r in results) / n, 4),
        "supporting_recall": round(sum(r.supporting_recall for r in results) / n, 4),
        "searches_per_question": round(sum(r.num_searches for r in results) / n, 3),
        "variants_per_search": round(sum(searches) / len(searches), 3) if searches else 0.0,
    }


def write_transcripts(results: Mapping[str, Sequence[Any]], path: Path, per_mode: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for mode, mode_results in results.items():
            for result in mode_results[:per_mode]:
                record = {
                    "mode": mode,
                    "question": result.example.question,
                    "golds": result.example.golden_answers,
                    "answer": result.answer,
                    "exact_match": result.exact_match,
                    "transcript": result.transcript,
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    results = summary["results"]
    world = summary["world"]
    table = Table(
        title=f"Scripted expert on {world['test_questions']} held-out questions "
        f"(world '{world['size']}', seed {world['seed']}, {world['passages']} passages, "
        f"BM25 top-{summary['settings']['topk']} per variant)",
        caption="1q: one query per search (Search-R1 style); 3v: up to 3 variants per search. "
        "recall: supporting passages retrieved; searches: per question.",
    )
    table.add_column("question type", no_wrap=True)
    table.add_column("n", justify="right")
    for metric in ("EM", "recall", "searches"):
        for mode in MODES:
            table.add_column(f"{metric} {mode}", justify="right")
    for qtype in (*QUESTION_TYPES, "all"):
        if qtype not in results[next(iter(MODES))]:
            continue
        row = [qtype, str(results[next(iter(MODES))][qtype]["questions"])]
        for metric in ("exact_match", "supporting_recall", "searches_per_question"):
            row += [
                f"{results[mode][qtype][metric]:.3f}"
                if metric != "searches_per_question"
                else f"{results[mode][qtype][metric]:.2f}"
                for mode in MODES
            ]
        table.add_row(*row, end_section=qtype == QUESTION_TYPES[-1])
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=110)
    console.print(table)
