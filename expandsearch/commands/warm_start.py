"""``expandsearch warm-start``: the tiny default policy of a synthetic world, by behaviour cloning of the expert.

Trains a tokenizer on the world's texts, builds a small Qwen2 from a config, clones the scripted expert's
episodes on training questions (loss on the expert's tokens only), saves the policy in the transformers layout
and answers held-out test questions with it greedily. Prints the loss curve and the held-out metrics and writes
them to ``OUT/warm_start.json``. Then: ``expandsearch index --corpus WORLD/corpus.jsonl --kind bm25 --out IDX``
and ``expandsearch chat --model OUT --index IDX --squeezer none --once "…"``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

HELP = "behaviour-clone the scripted expert into a tiny Qwen2 policy for a synthetic world (transformers layout)"

SHOWN_METRICS = (
    "expert/reward_mean",
    "pretrain/final_loss",
    "bc/first_loss",
    "bc/final_loss",
    "eval/em",
    "eval/valid_action_rate",
    "eval/variants_per_search",
    "eval/searches",
    "eval/answered",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # defaults are the main job's (WarmStartConfig's, which equal expandsearch train's): shown, not restated
    from expandsearch.world_expert import WarmStartConfig

    default = WarmStartConfig()
    parser.add_argument("--world", required=True, help="world directory written by `expandsearch world`")
    parser.add_argument("--out", required=True, help="policy directory to write (transformers layout)")
    parser.add_argument(
        "--pretrain-steps", type=int, help=f"LM steps on the world's search results first ({default.pretrain.steps})"
    )
    parser.add_argument("--steps", type=int, help=f"behaviour-cloning steps ({default.bc.steps})")
    parser.add_argument("--batch-size", type=int, help=f"trajectories per step ({default.bc.batch_size})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate ({default.bc.lr})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order and the initial weights")
    parser.add_argument("--demos", type=int, help=f"training questions the expert plays ({default.demonstrations})")
    parser.add_argument(
        "--eval-questions", type=int, help=f"held-out test questions to evaluate on ({default.eval_questions}: none)"
    )
    parser.add_argument("--hidden-size", type=int, help=f"width of the policy ({default.model.hidden_size})")
    parser.add_argument("--layers", type=int, help=f"transformer blocks ({default.model.num_hidden_layers})")
    parser.add_argument("--vocab-size", type=int, help=f"tokenizer vocabulary target ({default.vocab_size})")
    parser.add_argument("--squeezer", help=f"squeezer of demonstrations and evaluation ({default.squeezer})")
    parser.add_argument(
        "--name-shuffle",
        type=float,
        help=f"probability of renaming a demonstration's entities ({default.name_shuffle})",
    )


def build_config(args: argparse.Namespace) -> Any:
    """A WarmStartConfig from the defaults and whichever options were given."""
    from expandsearch.world_expert import WarmStartConfig

    config = WarmStartConfig(model_seed=args.seed)
    pretrain = replace(config.pretrain, **_given(args, steps="pretrain_steps"))
    bc = replace(config.bc, seed=args.seed, **_given(args, steps="steps", batch_size="batch_size", lr="lr"))
    model = _given(args, hidden_size="hidden_size", num_hidden_layers="layers")
    if "hidden_size" in model:
        model["intermediate_size"] = 4 * model["hidden_size"]
    top = _given(args, demonstrations="demos", eval_questions="eval_questions", vocab_size="vocab_size")
    top.update(_given(args, squeezer="squeezer", name_shuffle="name_shuffle"))
    return replace(config, pretrain=pretrain, bc=bc, model=replace(config.model, **model), **top)


def _given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """Config field → option value, for the options the user gave."""
    return {field: getattr(args, option) for field, option in fields.items() if getattr(args, option) is not None}


def run(args: argparse.Namespace) -> int:
    from expandsearch.world_expert import METRICS_FILE, build_world_policy

    config = build_config(args)
    metrics = build_world_policy(args.world, args.out, config, log=lambda line: print(line, flush=True))
    print()
    for key in SHOWN_METRICS:
        if key in metrics:
            print(f"{key:28s} {metrics[key]:.4f}")
    print(
        f"\nwrote the policy to {args.out} and its metrics to {args.out}/{METRICS_FILE} "
        f"in {metrics['perf/total_seconds']:.0f} s"
    )
    return 0
