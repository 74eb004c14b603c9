"""What GRPO's advantages reward: a policy's sampled episodes on training questions, by question type and searches.

The trainer's own rollout stage (the default config's sampling, temperature and budgets, unless overridden)
samples ``--batches`` steps' worth of episodes from ``--policy`` on the world's training questions; the table gives,
per question type and number of searches, how many episodes searched that often and their mean reward. Within
a group, the samples that searched the rewarded number of times get the positive advantages, so the table shows
which search depth RL pushes toward on each question type (``docs/experiment_log.md``, 2026-12-02, last entry)::

    .venv/bin/python benchmarks/search_depth.py --policy runs/demo/warm_start --world runs/demo/world \\
        [--batches 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

from expandsearch.commands.train import DEFAULT_CONFIG
from expandsearch.config import load_config
from expandsearch.rl import main_job
from expandsearch.rl.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="a policy directory (transformers layout)")
    parser.add_argument("--world", type=Path, required=True, help="the world directory it was trained on")
    parser.add_argument("--batches", type=int, default=3, help="rollout steps to sample")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("overrides", nargs="*", help="key=value settings, as for `expandsearch train`")
    args = parser.parse_args()
    config = load_config(TrainConfig, args.config, args.overrides)
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    with tempfile.TemporaryDirectory() as index_dir:
        trainer = main_job.build_world_trainer(config, args.policy, args.world, Path(index_dir) / "index")
        kinds = trainer.task.train.types
        cells: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        try:
            for _ in range(args.batches):
                trainer.step += 1  # the rollout's seed and data position follow the step
                for trajectory in trainer.rollout():
                    searches = int(trajectory.metrics.get("searches", 0))
                    cells[kinds.get(trajectory.example_id or "", "?"), searches].append(trajectory.reward)
        finally:
            trainer.close()
    print("| type | searches | episodes | share of the type | mean reward |")
    print("|---|---|---|---|---|")
    totals: collections.Counter[str] = collections.Counter()
    for (kind, _), rewards in cells.items():
        totals[kind] += len(rewards)
    for (kind, searches), rewards in sorted(cells.items()):
        share = len(rewards) / totals[kind]
        print(f"| {kind} | {searches} | {len(rewards)} | {share:.2f} | {sum(rewards) / len(rewards):.3f} |")


if __name__ == "__main__":
    main()
