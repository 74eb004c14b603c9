"""``expandsearch eval-retrieval``: retrieval-only evaluation, the question as the only query (``eval.retrieval``).

Per dataset and cut-off k it reports supporting-passage recall, the share of questions with every supporting
passage found, and the share with a gold answer in the retrieved passages; metrics without ground truth are left
out. ``--out DIR`` keeps ``results.json`` (what ``expandsearch regress`` reads), ``results.md`` and per-question
rows; the table is printed either way::

    expandsearch eval-retrieval --data data/hotpotqa --index idx/hotpotqa-bm25 --split dev --topk 3,10 --out runs/r
    expandsearch eval-retrieval --data data/nq data/popqa --retriever-url http://127.0.0.1:8000 --limit 200
"""

from __future__ import annotations

import argparse
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from expandsearch.cli import UserError

if TYPE_CHECKING:
    from eval.datasets import EvalDataset
    from eval.retrieval import RetrievalSource

HELP = "retrieval-only evaluation: supporting-passage recall and answer-in-passages@k, the question as the query"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="[NAME=]FILE.jsonl|DIR",
        help="FlashRAG QA files, or `expandsearch prepare qa` folders (DIR/SPLIT.jsonl); several allowed",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index directory built by `expandsearch index`")
    source.add_argument("--retriever-url", help="retriever server URL (expandsearch serve-retriever, Search-R1's)")
    parser.add_argument("--topk", default="3,10", help="comma-separated cut-offs k (default 3,10)")
    parser.add_argument("--limit", type=int, help="evaluate the first N questions of each dataset")
    parser.add_argument("--split", default="test", help="split file read from a folder (default test; else dev)")
    parser.add_argument("--out", help="write results.json, results.md and <dataset>.jsonl here")
    parser.add_argument("--device", help="torch device of a dense index's query encoder (default: cuda if any)")
    parser.add_argument("--token-env", help="environment variable holding the retriever server's bearer token")


def run(args: argparse.Namespace) -> int:
    from eval.retrieval import evaluate_retrieval, parse_ks, results_table, write_outputs
    from retriever_server.client import RetrieverError

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")  # said now, not after the evaluation
    ks = parse_ks(args.topk)
    datasets = _load_datasets(args)
    try:
        with _open_source(args) as source:
            report = evaluate_retrieval(source, datasets, ks, log=lambda line: print(line, flush=True))
    except RetrieverError as error:  # a server that is down or refuses the request: one line, not a traceback
        raise UserError(str(error)) from error
    results = report.results()
    print(results_table(results))
    if args.out:
        try:
            write_outputs(report, args.out)
        except OSError as error:  # a folder that cannot be made or written: one line, not a traceback
            raise UserError(f"cannot write --out {args.out}: {error}") from error
        print(f"\nwritten to {args.out}: results.json, results.md, <dataset>.jsonl ({report.seconds:.1f} s)")
    return 0


def _load_datasets(args: argparse.Namespace) -> list[EvalDataset]:
    """The ``--data`` datasets (first ``--limit`` questions each), each announced in one line."""
    from eval.datasets import DatasetError, load_dataset
    from eval.retrieval import check_unique_names, resolve_data

    try:
        specs = [resolve_data(item, args.split) for item in args.data]
        check_unique_names(specs)
        datasets = [load_dataset(spec, args.limit) for spec in specs]
    except DatasetError as error:
        raise UserError(str(error)) from error
    for dataset in datasets:
        note = f" ({dataset.spec.note})" if dataset.spec.note else ""
        print(f"{dataset.name}: {len(dataset.examples)} questions from {dataset.spec.path}{note}", flush=True)
    return datasets


def _open_source(args: argparse.Namespace) -> AbstractContextManager[RetrievalSource]:
    """The retriever named by ``--index`` or ``--retriever-url`` (an index that cannot load is a ValueError)."""
    from eval.retrieval import open_index_source, open_url_source

    if args.index:
        return open_index_source(args.index, device=args.device)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and token is None:
        raise UserError(f"--token-env {args.token_env}: that environment variable is not set")
    return open_url_source(args.retriever_url, token=token)
