"""``expandsearch coaug``: query and document co-augmentation on BEIR data (``docs/coaugmentation.md``).

::

    expandsearch coaug prepare --beir DIR --out corpus.jsonl             # BEIR corpus → our corpus format
    expandsearch coaug prepare --hotpotqa TRAIN.jsonl TEST.jsonl --out DIR   # a BEIR folder from HotpotQA
    expandsearch coaug augment --beir DIR --side documents --kind sparse --model smollm2 --out runs/docs
    expandsearch coaug augment --beir DIR --side queries --split test --kind sparse --model smollm2 --out runs/q
    expandsearch coaug eval --beir DIR --index idx [--augmented-index idx_aug] [--query-augmentations runs/q] --out R
    expandsearch coaug pool --beir DIR --index idx [--query-augmentations runs/q] --queries 100 --depth 10 --out D
    expandsearch coaug train [--config FILE] [--resume] [KEY=VALUE ...]   # joint RL (expandsearch train, task coaug)

``augment`` is resumable: run it again with the same ``--out`` after a kill and it augments only what is missing;
``--side documents`` also writes ``OUT/corpus.jsonl``, the augmented corpus for ``expandsearch index``.
``pool`` writes a smaller BEIR folder (some queries; the documents their qrels and top rankings name) on which
augmenting every document costs minutes instead of hours; evaluate every condition on it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expandsearch.cli import UserError
from train_configs import config_path

if TYPE_CHECKING:
    from agent_env.augment import Side

HELP = "co-augmentation on BEIR data: prepare a corpus, augment documents or queries with an LLM, evaluate"

COAUG_CONFIG = config_path("smollm2_scifact_coaug_cpu.yaml")
"""``coaug train``'s default configuration (package data)."""
KINDS = ("sparse", "dense")  # agent_env.augment.KINDS, kept literal so --help imports nothing heavy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="coaug_command", metavar="STEP", required=True)
    _prepare_arguments(
        sub.add_parser("prepare", help="BEIR corpus → our corpus format; or a BEIR folder from HotpotQA")
    )
    _augment_arguments(sub.add_parser("augment", help="augment a BEIR corpus's documents or a split's queries"))
    _eval_arguments(sub.add_parser("eval", help="NDCG@10 / Recall@100 per condition: none, query, documents, both"))
    _pool_arguments(sub.add_parser("pool", help="a pooled BEIR sub-task: N queries, their qrels and top-K documents"))
    _train_arguments(
        sub.add_parser("train", help="joint RL of query + document augmentation (expandsearch train, task coaug)")
    )


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from expandsearch.commands import train

    train.add_arguments(parser)
    parser.set_defaults(config=str(COAUG_CONFIG))


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--beir", help="BEIR folder whose corpus.jsonl to convert")
    source.add_argument(
        "--hotpotqa", nargs=2, metavar=("TRAIN", "TEST"), help="HotpotQA distractor files for the train / test splits"
    )
    parser.add_argument("--out", required=True, help="--beir: the corpus file to write; --hotpotqa: the BEIR folder")


def _augment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--side", required=True, choices=["documents", "queries"], help="what to augment")
    parser.add_argument("--kind", required=True, choices=KINDS, help="retriever the prompt writes for")
    parser.add_argument("--model", required=True, help="model dir, .gguf or 'smollm2' (with --url: its tokenizer)")
    parser.add_argument("--url", help="OpenAI-compatible completions server (vllm serve, expandsearch serve-llm)")
    parser.add_argument("--out", required=True, help="output folder (augmentations.jsonl, settings, stats, corpus)")
    parser.add_argument("--split", default="test", help="--side queries: whose queries (default test)")
    parser.add_argument("--limit", type=int, help="augment only the first N documents / queries")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation budget per item (default 128)")
    parser.add_argument("--max-prompt-tokens", type=int, default=512, help="user text is cut to fit (default 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-think", action="store_true", help="answer at once, the reply opened with <answer> (small models)"
    )


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beir", required=True, help="BEIR folder (queries.jsonl, qrels/SPLIT.tsv, corpus.jsonl)")
    parser.add_argument("--split", default="test", help="qrels split to evaluate (default test)")
    parser.add_argument("--index", required=True, help="index directory over the original corpus (expandsearch index)")
    parser.add_argument("--augmented-index", help="index directory over the augmented corpus")
    parser.add_argument("--query-augmentations", help="`coaug augment --side queries` output folder (or its jsonl)")
    parser.add_argument("--topk", type=int, default=100, help="hits retrieved per query (default 100)")
    parser.add_argument("--out", required=True, help="write results.json, results.md, per_query.jsonl here")
    parser.add_argument("--device", help="torch device of a dense index's query encoder")


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beir", required=True, help="BEIR folder to cut down")
    parser.add_argument("--split", default="test", help="qrels split whose queries to sample (default test)")
    parser.add_argument("--index", required=True, help="index over the original corpus: pools its top-K per query")
    parser.add_argument("--query-augmentations", help="also pool the top-K of the augmented queries (coaug augment)")
    parser.add_argument("--queries", type=int, default=100, help="queries drawn at random (default 100)")
    parser.add_argument("--depth", type=int, default=10, help="pool depth K per ranking (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query draw (default 0)")
    parser.add_argument("--out", required=True, help="BEIR folder to write (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--device", help="torch device of a dense index's query encoder")


def run(args: argparse.Namespace) -> int:
    steps = {"prepare": _prepare, "augment": _augment, "eval": _eval, "pool": _pool, "train": _train}
    return steps[args.coaug_command](args)


def _train(args: argparse.Namespace) -> int:
    """``expandsearch train`` on the co-augmentation config (the SciFact sample, SmolLM2) unless --config says."""
    from expandsearch.commands import train

    return train.run(args)


def _prepare(args: argparse.Namespace) -> int:
    from data_prep.beir import hotpotqa_task, load_corpus, write_beir, write_corpus

    if args.beir:
        count = write_corpus(load_corpus(Path(args.beir) / "corpus.jsonl"), args.out)
        print(f"{count} documents written to {args.out}")
        return 0
    tasks = hotpotqa_task({"train": args.hotpotqa[0], "test": args.hotpotqa[1]})
    write_beir(list(tasks.values()), args.out)
    write_corpus(tasks["test"].corpus, Path(args.out) / "corpus_for_index.jsonl")
    sizes = ", ".join(f"{split} {len(task.queries)} queries" for split, task in tasks.items())
    print(f"BEIR folder {args.out}: {len(tasks['test'].corpus)} documents, {sizes}")
    return 0


def _augment(args: argparse.Namespace) -> int:
    from agent_env.augment import document_input, sampling_params
    from data_prep.augmentation import AUGMENTATIONS_FILE, read_augmentations, run_augmentation, write_augmented_corpus
    from data_prep.beir import load_beir, load_corpus

    for name in ("batch_size", "max_new_tokens", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.side == "documents":
        corpus = load_corpus(Path(args.beir) / "corpus.jsonl")
        items = [(passage.id, document_input(passage)) for passage in corpus]
    else:
        task = load_beir(args.beir, args.split)
        items = list(task.queries.items())
    items = items[: args.limit] if args.limit else items
    engine, tokenizer = _engine(args)
    settings = {
        "model": args.model,
        "url": args.url,
        "prompt_version": _prompt_version(),
        "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": args.max_prompt_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    side: Side = "document" if args.side == "documents" else "query"
    stats = run_augmentation(
        items,
        args.out,
        engine=engine,
        tokenizer=tokenizer,
        kind=args.kind,
        side=side,
        sampling=sampling_params(args.max_new_tokens, args.temperature, args.seed if args.temperature else None),
        settings=settings,
        batch_size=args.batch_size,
        max_prompt_tokens=args.max_prompt_tokens,
        think=not args.no_think,
        progress=not args.no_progress,
    )
    print(
        f"{stats.items} {args.side} augmented ({stats.already_done} already done) in {stats.seconds:.1f} s: "
        f"{stats.items_per_s:.3f} {args.side}/s, {stats.generated_tokens_per_item:.1f} generated and "
        f"{stats.prompt_tokens_per_item:.1f} prompt tokens each, {stats.no_answer} without an answer"
    )
    if args.side == "documents":
        records = read_augmentations(Path(args.out) / AUGMENTATIONS_FILE)
        counts = write_augmented_corpus(corpus, records, args.kind, Path(args.out) / "corpus.jsonl")
        print(f"augmented corpus {Path(args.out) / 'corpus.jsonl'}: {counts}")
    return 0


def _prompt_version() -> int:
    from agent_env.augment import PROMPT_VERSION

    return PROMPT_VERSION


def _engine(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.url:
        from agent_env.models import load_tokenizer
        from agent_env.openai_compat import OpenAICompletionsEngine

        return OpenAICompletionsEngine(args.url, api_key=os.environ.get("OPENAI_API_KEY")), load_tokenizer(args.model)
    from agent_env.engine import TransformersEngine

    engine = TransformersEngine.from_pretrained(args.model, device=args.device, seed=args.seed)
    return engine, engine.tokenizer


def _query_records(option: str | None) -> dict[str, dict[str, Any]] | None:
    """The ``--query-augmentations`` records (a ``coaug augment`` folder or its jsonl), None without the option."""
    from data_prep.augmentation import AUGMENTATIONS_FILE, read_augmentations

    if not option:
        return None
    path = Path(option)
    path = path / AUGMENTATIONS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"--query-augmentations: no {path}")
    return read_augmentations(path)


def _eval(args: argparse.Namespace) -> int:
    from data_prep.beir import load_beir
    from eval.coaug import conditions, evaluate_conditions, results_table, write_results

    if args.topk < 10:
        raise UserError(f"--topk must be >= 10 (NDCG@10), got {args.topk}")
    task = load_beir(args.beir, args.split)
    records = _query_records(args.query_augmentations)
    chosen = conditions(args.index, args.augmented_index, records)
    results = evaluate_conditions(task, chosen, topk=args.topk, device=args.device)
    write_results(results, args.out)
    print(results_table(results))
    return 0


def _pool(args: argparse.Namespace) -> int:
    import json

    from data_prep.beir import CORPUS_FILE, load_beir, pooled_task, sample_query_ids, write_beir
    from eval.coaug import conditions, retrieve
    from retriever_server.index_dir import read_manifest

    if args.queries < 1 or args.depth < 1:
        raise UserError(f"--queries and --depth must be >= 1, got {args.queries} and {args.depth}")
    if (Path(args.out) / CORPUS_FILE).exists():
        raise UserError(f"--out {args.out} already holds a BEIR corpus; pool into a new folder")
    task = load_beir(args.beir, args.split)
    query_ids = sample_query_ids(task, args.queries, seed=args.seed)
    subset = task.with_queries(query_ids)
    manifest = read_manifest(args.index)
    records = _query_records(args.query_augmentations)
    chosen = conditions(args.index, None, records)
    runs = [retrieve(subset, condition, topk=args.depth, device=args.device)[0] for condition in chosen]
    pooled = pooled_task(task, query_ids, runs, depth=args.depth)
    out = write_beir([pooled], args.out)
    pool = {
        "source": str(Path(args.beir).resolve()),
        "split": args.split,
        "queries": len(pooled.queries),
        "documents": len(pooled.corpus),
        "depth": args.depth,
        "seed": args.seed,
        "pooled_runs": [condition.name for condition in chosen],
        "index": str(Path(args.index).resolve()),
        "index_kind": manifest["kind"],
        "bm25": manifest.get("bm25"),
        "query_augmentations": str(Path(args.query_augmentations).resolve()) if args.query_augmentations else None,
    }
    (out / "pool.json").write_text(json.dumps(pool, indent=2) + "\n", encoding="utf-8")
    print(
        f"pooled BEIR folder {out}: {len(pooled.queries)} {args.split} queries, {len(pooled.corpus)} of "
        f"{len(task.corpus)} documents (qrels + top {args.depth} of {', '.join(pool['pooled_runs'])})"
    )
    return 0
