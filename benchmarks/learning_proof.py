"""The learning proof at full scale: the main job over several seeds, with multi-variant and single-query search.

For each seed and each search mode it runs the main job (``expandsearch train``, the embedded default of
``train_configs/tiny_cpu.yaml``) in a subprocess, unless its run directory already holds a ``summary.json``, then
prints held-out exact match (greedy, all test questions of the tiny world) per policy and question type as the
mean over seeds, with every seed's value beside it:

- ``multi``: the default — up to 3 query variants per search (the ``expandsearch`` prompt);
- ``single``: the same budget with one query per search everywhere (Search-R1 style: the ``search_r1`` prompt,
  demonstrations with one variant, RL and evaluation with one).

``seed`` seeds the policy's initial weights, the data order, the demonstrations' breadths and the sampling; the
world (``world.seed``) stays fixed, so every run answers the same held-out questions. Runs go two at a time with
one torch thread each (the machine has two cores)::

    .venv/bin/python benchmarks/learning_proof.py --out runs/learning_proof --seeds 0,1,2 [--modes multi,single]

``--set KEY=VALUE`` (repeatable) adds an ``expandsearch train`` override to every run. ``--resume`` runs every
job again with ``expandsearch train --resume``, which reuses the world, index and warm start, continues RL from
the last checkpoint and evaluates afresh: with ``--set steps=80`` it takes the 40-step runs of ``--out`` on to
80 steps (the learning rate is constant after warm-up, so the schedule is an 80-step run's)::

    .venv/bin/python benchmarks/learning_proof.py --out R --seeds 0,1,2,3,4 --modes multi --set steps=80 --resume
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

from expandsearch.rl.evaluation import sign_test_p

MODES: dict[str, list[str]] = {
    "multi": [],
    "single": [
        "rollout.episode.max_variants=1",
        "rollout.episode.template=search_r1",
        "warm_start.world_expert.variant_mix=[]",
    ],
}
"""Search mode -> the ``expandsearch train`` overrides that make it."""

ROWS = ("warm start", "after RL", "after RL, 1 query/search")
TYPES = ("all", "single_hop", "bridge", "three_hop", "comparison")


def run_one(out: Path, mode: str, seed: int, overrides: list[str], resume: bool) -> dict[str, Any]:
    """The summary of one main-job run (run now unless it finished before and ``resume`` is off)."""
    run_dir = out / f"{mode}_seed{seed}"
    summary_file = run_dir / "summary.json"
    if resume or not summary_file.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).with_name("expandsearch")),
            "train",
            *(["--resume"] if resume else []),
            f"run_dir={run_dir}",
            f"seed={seed}",
            "torch_threads=1",
            "logging.progress=false",
            *MODES[mode],
            *overrides,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        with (run_dir / "train.log").open("a" if resume else "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{mode} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(summary_file.read_text())


def em_of(summary: dict[str, Any], row: str, kind: str) -> float | None:
    evaluation = summary["evaluations"][row]
    return evaluation["metrics"]["em"] if kind == "all" else evaluation["em_by_type"].get(kind)


def table(summaries: dict[tuple[str, int], dict[str, Any]], modes: list[str], seeds: list[int]) -> str:
    header = "| search | policy | " + " | ".join(f"EM {kind}" for kind in TYPES) + " |"
    lines = [header, "|---|---|" + "---|" * len(TYPES)]
    for mode in modes:
        for row in ROWS:
            if mode == "single" and row == ROWS[2]:
                continue  # already one query per search
            cells = []
            for kind in TYPES:
                values = [em_of(summaries[mode, seed], row, kind) for seed in seeds]
                known = [value for value in values if value is not None]
                per_seed = " / ".join(f"{value:.3f}" for value in known)
                spread = f" ± {pstdev(known):.3f}" if len(known) > 1 else ""
                cells.append(f"**{fmean(known):.3f}**{spread} ({per_seed})" if known else "-")
            lines.append(f"| {mode} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def search_behaviour(summaries: dict[tuple[str, int], dict[str, Any]], modes: list[str], seeds: list[int]) -> str:
    lines = ["| search | policy | searches | variants per search | warm start s | RL s |", "|---|---|---|---|---|---|"]
    for mode in modes:
        for row in ROWS[:2]:
            metrics = [summaries[mode, seed]["evaluations"][row]["metrics"] for seed in seeds]
            timings = [summaries[mode, seed]["timings_s"] for seed in seeds]
            lines.append(
                f"| {mode} | {row} | {fmean(m['searches'] for m in metrics):.2f} | "
                f"{fmean(m['variants_per_search'] for m in metrics):.2f} | "
                f"{fmean(t['warm start'] for t in timings):.0f} | {fmean(t['rl'] for t in timings):.0f} |"
            )
    return "\n".join(lines)


def paired_table(summaries: dict[tuple[str, int], dict[str, Any]], modes: list[str], seeds: list[int]) -> str:
    """After RL against the warm start, question by question: per seed, and pooled over the seeds."""
    name = "after RL vs warm start"
    lines = ["| search | seed | EM difference | gained | lost | sign test p |", "|---|---|---|---|---|---|"]
    for mode in modes:
        runs = [(seed, summaries[mode, seed].get("paired", {}).get(name)) for seed in seeds]
        known = [(seed, pair) for seed, pair in runs if pair is not None]
        for seed, pair in known:
            cells = f"{pair['difference']:+.3f} | {pair['gained']:.0f} | {pair['lost']:.0f} | {pair['sign_test_p']:.2g}"
            lines.append(f"| {mode} | {seed} | {cells} |")
        if len(known) > 1:
            gained, lost = (sum(int(pair[key]) for _, pair in known) for key in ("gained", "lost"))
            difference = fmean(pair["difference"] for _, pair in known)
            pooled = f"{difference:+.3f} | {gained} | {lost} | {sign_test_p(gained, lost):.2g}"
            lines.append(f"| {mode} | pooled | {pooled} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/learning_proof"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="multi,single")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override of every run")
    parser.add_argument("--resume", action="store_true", help="run every job again with `expandsearch train --resume`")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    jobs = [(mode, seed) for seed in seeds for mode in modes]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda job: run_one(args.out, *job, args.set, args.resume), jobs))
    summaries = dict(zip(jobs, results, strict=True))
    print("\nheld-out EM (greedy, all test questions), mean over seeds ± std (each seed)\n")
    print(table(summaries, modes, seeds))
    print()
    print(search_behaviour(summaries, modes, seeds))
    print("\nafter RL vs warm start, question by question (runs whose summary has per-question rewards)\n")
    print(paired_table(summaries, modes, seeds))


if __name__ == "__main__":
    main()
