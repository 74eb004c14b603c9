"""``expandsearch world``: generate a synthetic multi-hop world (corpus, questions, parquet)."""

from __future__ import annotations

import argparse
from dataclasses import replace

HELP = "generate a synthetic multi-hop world: wiki-18 corpus, FlashRAG jsonl and verl parquet per split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", default="small", help="world size: tiny, demo, small or medium (default small)")


def run(args: argparse.Namespace) -> int:
    from data_prep.synthetic import WORLD_SIZES, generate_world, write_world

    if args.size not in WORLD_SIZES:
        raise ValueError(f"unknown --size {args.size!r}; choose one of {', '.join(WORLD_SIZES)}")
    world = generate_world(replace(WORLD_SIZES[args.size], seed=args.seed))
    paths = write_world(world, args.out)
    counts = ", ".join(f"{split} {len(examples)}" for split, examples in world.questions.items())
    print(f"world (size {args.size}, seed {args.seed}): {len(world.passages)} passages; questions: {counts}")
    for name, path in paths.items():
        print(f"  {name:18s} {path}")
    return 0
