"""``expandsearch eval``: score a policy on QA benchmarks with four methods under one harness.

Direct answer, naive RAG, a Search-R1-style agent and the ExpandSearch agent (``eval.methods``) all run through
the same episode driver, engine, retriever and squeezer, decoding greedily; per dataset x method it reports EM,
F1, cover-EM, answer-in-retrieved-passages, supporting-passage recall, turns, variants per search and tokens.
Per-question results stream to ``OUT/<dataset>/<method>.jsonl``, so an interrupted run resumes where it stopped;
at the end come ``OUT/results.json``, ``OUT/results.md`` (printed) and ``OUT/results.png``. See
``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from expandsearch.cli import UserError

if TYPE_CHECKING:
    from agent_env.assembly import EnvSpec

HELP = "evaluate a policy on QA datasets: direct, naive RAG, Search-R1-style and ExpandSearch agents (EM, F1, recall)"

DEFAULT_METHODS = "direct,rag,search_r1,expandsearch"
# Kept here rather than imported so `expandsearch --help` stays instant; tests check they match eval.fallback's.
ANSWER_FALLBACKS = ("none", "last-turn")
COUNT_ARGUMENTS = (
    "limit",
    "variants",
    "topk",
    "max_turns",
    "turn_tokens",
    "observation_tokens",
    "concurrency",
    "batch_size",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="policy: model directory, .gguf file or 'smollm2'")
    parser.add_argument("--engine-url", help="OpenAI-compatible completions endpoint serving --model (optional)")
    parser.add_argument(
        "--datasets", required=True, help="comma-separated names (read DATA_DIR/NAME/SPLIT.jsonl) or NAME=FILE.jsonl"
    )
    parser.add_argument("--data-dir", help="folder holding one folder per dataset (expandsearch prepare / world)")
    parser.add_argument("--split", default="test", help="split file to read (default test; falls back to dev)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index directory built by `expandsearch index`")
    source.add_argument("--retriever-url", help="retriever server URL (expandsearch serve-retriever)")
    parser.add_argument(
        "--squeezer", default="extractive", help="none, extractive, local:MODEL or openai:URL (default extractive)"
    )
    parser.add_argument("--out", required=True, help="output directory (resumed when it holds this run's results)")
    parser.add_argument("--limit", type=int, help="evaluate the first N questions of each dataset")
    parser.add_argument(
        "--protocol", default="tags", choices=("tags", "tool_calls"), help="the agents' action format (default tags)"
    )
    parser.add_argument("--variants", type=int, default=3, help="most query variants per search (default 3)")
    parser.add_argument("--topk", type=int, default=3, help="passages per query, and for naive RAG (default 3)")
    parser.add_argument("--max-turns", type=int, default=4, help="turns per agent episode, answer included (default 4)")
    parser.add_argument("--turn-tokens", type=int, default=500, help="most tokens per policy turn (default 500)")
    parser.add_argument("--observation-tokens", type=int, default=500, help="most tokens per observation (500)")
    parser.add_argument("--concurrency", type=int, default=64, help="episodes in flight (default 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="most sequences per generation batch (default 64)")
    parser.add_argument("--device", help="torch device of the policy (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", help="policy dtype, e.g. bfloat16 (default: the checkpoint's)")
    parser.add_argument(
        "--answer-fallback",
        default="none",
        choices=ANSWER_FALLBACKS,
        help="also score untagged episodes on the policy's last turn (reported apart from EM; default none)",
    )


def run(args: argparse.Namespace) -> int:
    from agent_env.assembly import EnvSetupError
    from eval.datasets import DatasetError, load_dataset, resolve_datasets
    from eval.methods import parse_methods
    from eval.runner import run_evaluation
    from eval.store import RunMismatchError

    try:
        _check_counts(args)
        methods = parse_methods(args.methods)
        specs = resolve_datasets(args.datasets, args.data_dir, args.split)
        datasets = [load_dataset(spec, args.limit) for spec in specs]
        for dataset in datasets:
            note = f" ({dataset.spec.note})" if dataset.spec.note else ""
            print(f"{dataset.name}: {len(dataset.examples)} questions from {dataset.spec.path}{note}", flush=True)
        results = run_evaluation(
            _env_spec(args),
            datasets,
            methods,
            args.out,
            concurrency=args.concurrency,
            answer_fallback=args.answer_fallback,
            log=_log,
        )
    except (EnvSetupError, DatasetError, RunMismatchError) as error:
        raise UserError(str(error)) from error
    from eval.report import results_table

    print(results_table(results))
    print(f"\nwritten to {args.out}: results.json, results.md, results.png, <dataset>/<method>.jsonl")
    return 0


def _check_counts(args: argparse.Namespace) -> None:
    counts = (
        "limit",
        "variants",
        "topk",
        "max_turns",
        "turn_tokens",
        "observation_tokens",
        "concurrency",
        "batch_size",
    )
    for name in counts:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _env_spec(args: argparse.Namespace) -> EnvSpec:
    from agent_env.assembly import EnvSpec
    from agent_env.episode import EpisodeConfig

    config = EpisodeConfig(
        protocol=args.protocol,
        max_variants=args.variants,
        topk=args.topk,
        max_turns=args.max_turns,
        max_turn_tokens=args.turn_tokens,
        max_observation_tokens=args.observation_tokens,
        temperature=0.0,
    )
    options: dict[str, object] = {} if args.engine_url else {"max_batch_size": args.batch_size}
    if args.device and not args.engine_url:
        options["device"] = args.device
    if args.dtype and not args.engine_url:
        options["dtype"] = args.dtype
    return EnvSpec(
        model=args.model,
        engine_url=args.engine_url,
        index_dir=args.index,
        retriever_url=args.retriever_url,
        squeezer=args.squeezer,
        config=config,
        engine_options=options,
    )


def _log(line: str) -> None:
    print(line, flush=True)
