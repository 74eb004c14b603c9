"""``expandsearch train``: the main job — world → BM25 index → warm start → GRPO/PPO → held-out evaluation.

``expandsearch train`` runs the embedded default (``train_configs/tiny_cpu.yaml``); ``--config FILE`` another
configuration; any ``section.key=value`` after the options overrides one field (``algorithm.estimator=gae``,
``rollout.group_size=8``). ``--resume`` continues a killed run from its last checkpoint. ``--show-config`` prints
every field with its value and documentation, and exits.

``--backend verl`` runs the same config's RL under verl's PPO trainer on Ray instead (GPUs; data, policy and
retriever as prepared beforehand, see ``train_configs/verl/``): the config is translated into verl's Hydra
overrides and checked against verl's own config first; ``--dry-run`` stops there and prints the command, and
``--ray-address URL`` submits it to a running Ray cluster (``ray job submit``) instead of starting one here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from train_configs import config_path

if TYPE_CHECKING:
    from expandsearch.rl.config import TrainConfig

HELP = "train a search agent with RL on one machine (world, index, warm start, GRPO/PPO, evaluation) or on verl"
DEFAULT_CONFIG = config_path("tiny_cpu.yaml")  # package data: found by a non-editable install too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=20")
    parser.add_argument("--config", default=None, help=f"YAML config (default {DEFAULT_CONFIG.name})")
    parser.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    parser.add_argument("--show-config", action="store_true", help="print the resolved config with docs and exit")
    parser.add_argument(
        "--backend",
        choices=("embedded", "verl"),
        default="embedded",
        help="embedded: this process trains (CPU or one GPU); verl: verl's PPO trainer on Ray (the verl section)",
    )
    parser.add_argument(
        "--ray-address", default=None, metavar="URL", help="with --backend verl: submit to this Ray job server"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="with --backend verl: check the verl config, print the command, exit"
    )


def run(args: argparse.Namespace) -> int:
    from expandsearch.config import describe_config, load_config
    from expandsearch.rl.config import TrainConfig

    if args.backend != "verl" and (args.dry_run or args.ray_address):
        from expandsearch.cli import UserError

        raise UserError("--dry-run and --ray-address go with --backend verl")
    config = load_config(TrainConfig, args.config or DEFAULT_CONFIG, args.overrides)
    if args.show_config:
        print(describe_config(TrainConfig, config))
        return 0
    if args.backend == "verl":
        from expandsearch.verl_backend.launch import run_verl

        return run_verl(config, ray_address=args.ray_address, dry_run=args.dry_run, resume=args.resume)
    return _run_embedded(config, resume=args.resume)


def _run_embedded(config: TrainConfig, *, resume: bool) -> int:
    from expandsearch.rl.main_job import run_main_job
    from expandsearch.rl.report import summary_table

    summary = run_main_job(config, resume=resume)
    print(summary["table"] if "table" in summary else summary_table(summary))
    print(f"summary: {Path(config.run_dir) / 'summary.json'}")
    return 0
