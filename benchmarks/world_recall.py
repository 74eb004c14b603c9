"""Benchmark: supporting-passage recall in the synthetic world, question alone vs oracle query variants.

    .venv/bin/python benchmarks/world_recall.py [--size tiny|small|medium] [--seed 0] [--split test]

Prints a markdown table (recall@k and the share of questions with every supporting passage found)
for each query strategy of ``data_prep.world_recall`` and each question type.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from data_prep.synthetic import WORLD_SIZES, generate_world
from data_prep.world_recall import QUERY_STRATEGIES, measure_recall
from retriever_server.bm25 import BM25Index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=list(WORLD_SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    args = parser.parse_args()
    started = time.perf_counter()
    world = generate_world(replace(WORLD_SIZES[args.size], seed=args.seed))
    index = BM25Index.build(world.passages)
    rows = measure_recall(world.questions[args.split], index, ks=(3, 10))
    table = {(r.strategy, r.question_type, r.k): r for r in rows}
    types = sorted({r.question_type for r in rows}, key=lambda t: (t == "all", t))
    print(
        f"world {args.size} seed {args.seed}: {len(world.passages)} passages, "
        f"{len(world.questions[args.split])} {args.split} questions, BM25 (bm25s)\n"
    )
    print("| strategy | queries/q | " + " | ".join(f"{t} R@3 (all) | {t} R@10 (all)" for t in types) + " |")
    print("|---|---|" + "---|" * (2 * len(types)))
    for strategy in QUERY_STRATEGIES:
        cells = [
            f"{table[strategy, t, k].recall:.2f} ({table[strategy, t, k].all_found:.2f})"
            for t in types
            for k in (3, 10)
        ]
        print(f"| {strategy} | {table[strategy, 'all', 3].queries_per_question:.1f} | " + " | ".join(cells) + " |")
    print(f"\n{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
