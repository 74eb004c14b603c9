"""``expandsearch train``: the main job — world → BM25 index → warm start → GRPO/PPO → held-out evaluation.

``expandsearch train`` runs the embedded default (``train_configs/tiny_cpu.yaml``); ``--config FILE`` another
configuration; any ``section.key=value`` after the options overrides one field (``algorithm.estimator=gae``,
``rollout.group_size=8``). ``--resume`` continues a killed run from its last checkpoint. ``--show-config`` prints
every field with its value and documentation, and exits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train_configs import config_path

HELP = "train a search agent with RL on one machine (world, index, warm start, GRPO/PPO, evaluation)"
DEFAULT_CONFIG = config_path("tiny_cpu.yaml")  # package data: found by a non-editable install too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=20")
    parser.add_argument("--config", default=None, help=f"YAML config (default {DEFAULT_CONFIG.name})")
    parser.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    parser.add_argument("--show-config", action="store_true", help="print the resolved config with docs and exit")


def run(args: argparse.Namespace) -> int:
    from expandsearch.config import describe_config, load_config
    from expandsearch.rl.config import TrainConfig
    from expandsearch.rl.main_job import run_main_job
    from expandsearch.rl.report import summary_table

    config = load_config(TrainConfig, args.config or DEFAULT_CONFIG, args.overrides)
    if args.show_config:
        print(describe_config(TrainConfig, config))
        return 0
    summary = run_main_job(config, resume=args.resume)
    print(summary["table"] if "table" in summary else summary_table(summary))
    print(f"summary: {Path(config.run_dir) / 'summary.json'}")
    return 0
