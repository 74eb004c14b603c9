"""``expandsearch prepare``: benchmark files, corpora and training mixes in the formats the rest of the project reads.

Four jobs, one sub-subcommand each (see ``docs/data.md``)::

    expandsearch prepare qa --dataset hotpotqa --input hotpot_dev_distractor_v1.json --out data/hotpotqa \\
        [--split test] [--layout auto] [--limit N] [--seed S] [--template expandsearch]
    expandsearch prepare corpus --input psgs_w100.tsv --out data/wiki18.jsonl [--format auto]
    expandsearch prepare mix --input data/nq data/hotpotqa --out data/mix/train.parquet [--sizes N,M] [--seed S]
    expandsearch prepare demos --input hotpot.jsonl 2wiki.jsonl --out runs/demos (--index DIR | --retriever-url URL
        | --build-index) --tokenizer smollm2 [--protocol tags|tool_calls] [--squeezer extractive] [--topk 3]
        [--variant-mix 1,2,3]

``qa`` writes ``{split}.jsonl`` (FlashRAG), ``{split}.parquet`` (verl) and, for distractor-style sources,
``corpus.jsonl`` with the questions' ``supporting_ids``. Each job prints one summary line; bad input exits with
status 2 and one line naming the file, the record and the field.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace

from expandsearch.cli import UserError

HELP = "prepare benchmarks (FlashRAG jsonl + verl parquet + context corpus), corpora (wiki-18 jsonl), training mixes"

# Kept here rather than imported so `expandsearch --help` stays instant; tests check they match data_prep's.
LAYOUT_CHOICES = ("auto", "flashrag", "hotpotqa", "hotpotqa_hf", "2wiki", "musique", "nq_open", "hf")
CORPUS_FORMAT_CHOICES = ("auto", "wiki18", "dpr_tsv", "title_text")


def _add_qa(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="benchmark name, the parquet data_source (e.g. nq, hotpotqa)")
    parser.add_argument("--input", required=True, help="file (jsonl, json list, parquet), HF dataset dir or hub name")
    parser.add_argument("--out", required=True, help="output directory ({split}.jsonl, {split}.parquet, corpus.jsonl)")
    parser.add_argument("--split", default="test", help="split name of the output files (default test)")
    parser.add_argument(
        "--hf-split", default=None, help="split to read from a multi-split Hugging Face dataset (default: --split)"
    )
    parser.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help="record layout (default: detect)")
    parser.add_argument("--limit", type=int, default=None, help="keep N questions, sub-sampled with --seed")
    parser.add_argument("--seed", type=int, default=0, help="sub-sampling seed (default 0)")
    parser.add_argument("--template", default="expandsearch", help="prompt template: expandsearch or search_r1")


def _add_corpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="corpus file: wiki-18 jsonl, DPR psgs_w100.tsv, {title,text}")
    parser.add_argument("--out", required=True, help="wiki-18 jsonl file to write")
    parser.add_argument(
        "--format", default="auto", choices=CORPUS_FORMAT_CHOICES, help="input format (default: detect)"
    )


def _add_mix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, nargs="+", help="verl parquet files, or directories with SPLIT.parquet"
    )
    parser.add_argument("--out", required=True, help="parquet file to write")
    parser.add_argument("--sizes", default=None, help="rows per input, comma-separated ('all' keeps every row)")
    parser.add_argument("--seed", type=int, default=0, help="sub-sampling and shuffling seed (default 0)")
    parser.add_argument("--split", default="train", help="file read from a directory input: SPLIT.parquet (train)")


def _add_demos(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, nargs="+", help="raw HotpotQA / 2WikiMultihopQA / MuSiQue files (any qa layout)"
    )
    parser.add_argument("--out", required=True, help="output directory (demos.jsonl, demos_summary.json)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", help="index directory (expandsearch index), searched in-process")
    where.add_argument("--retriever-url", help="retriever server URL (expandsearch serve-retriever, Search-R1's)")
    where.add_argument(
        "--build-index", action="store_true", help="build BM25 over the inputs' context paragraphs (OUT/index)"
    )
    parser.add_argument("--tokenizer", required=True, help="the policy's model spec: smollm2, a model dir, a .gguf")
    parser.add_argument("--squeezer", default="extractive", help="squeezer spec (default extractive)")
    parser.add_argument("--topk", type=int, default=3, help="passages per variant (default 3)")
    parser.add_argument("--variant-mix", default="1,2,3", help="breadths drawn per question (default 1,2,3)")
    parser.add_argument("--max-turns", type=int, default=4, help="policy turns per episode (default 4)")
    parser.add_argument("--max-turn-tokens", type=int, default=500, help="tokens per policy turn (default 500)")
    parser.add_argument(
        "--max-observation-tokens", type=int, default=500, help="tokens per observation body (default 500)"
    )
    parser.add_argument("--max-response-tokens", type=int, default=4096, help="response budget (default 4096)")
    parser.add_argument("--template", default="expandsearch", help="prompt template (default expandsearch)")
    parser.add_argument(
        "--protocol",
        default="tags",
        choices=("tags", "tool_calls"),
        help="action format the demonstrations are written in, as rollout.episode.protocol (default tags)",
    )
    parser.add_argument("--limit", type=int, default=None, help="questions per input, sub-sampled with --seed")
    parser.add_argument("--seed", type=int, default=0, help="sub-sampling and breadth seed (default 0)")


def _run_qa(args: argparse.Namespace) -> str:
    from data_prep.benchmarks import prepare_benchmark, write_benchmark

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    prepared = prepare_benchmark(
        args.dataset,
        args.input,
        layout=args.layout,
        split=args.hf_split or args.split,
        limit=args.limit,
        seed=args.seed,
    )
    if args.hf_split:
        prepared = replace(prepared, split=args.split)  # read one split, name the files after another
    paths = write_benchmark(prepared, args.out, template=args.template)
    sampled = (
        f"{len(prepared.examples)} of {prepared.source_questions}, seed {args.seed}"
        if len(prepared.examples) < prepared.source_questions
        else f"all {prepared.source_questions}"
    )
    corpus = f", {len(prepared.corpus)} context passages" if prepared.corpus else ""
    files = ", ".join(path.name for path in paths.values())
    return (
        f"{args.dataset} {prepared.split}: {len(prepared.examples)} questions ({sampled}; layout {prepared.layout})"
        f"{corpus} written to {args.out} ({files})"
    )


def _run_corpus(args: argparse.Namespace) -> str:
    from data_prep.corpora import convert_corpus

    used, count = convert_corpus(args.input, args.out, args.format)
    return f"corpus: {count} passages ({used}) written to {args.out}"


def _run_mix(args: argparse.Namespace) -> str:
    from data_prep.training_mix import build_mix, parse_sizes

    counts = build_mix(
        args.input, args.out, sizes=parse_sizes(args.sizes, len(args.input)), seed=args.seed, split=args.split
    )
    parts = ", ".join(f"{source} {count}" for source, count in counts.items())
    return f"mix: {sum(counts.values())} rows ({parts}; seed {args.seed}) written to {args.out}"


def _run_demos(args: argparse.Namespace) -> str:
    from agent_env.assembly import EnvSetupError
    from agent_env.episode import EpisodeConfig
    from data_prep.demos import DemoJob, prepare_demos

    try:
        mix = tuple(int(part) for part in args.variant_mix.split(","))
    except ValueError as error:
        raise UserError(f"--variant-mix must be comma-separated integers, got {args.variant_mix!r}") from error
    try:
        config = EpisodeConfig(
            template=args.template,
            protocol=args.protocol,
            topk=args.topk,
            max_turns=args.max_turns,
            max_turn_tokens=args.max_turn_tokens,
            max_observation_tokens=args.max_observation_tokens,
            max_response_tokens=args.max_response_tokens,
        )
        job = DemoJob(
            inputs=tuple(args.input),
            out_dir=args.out,
            tokenizer_spec=args.tokenizer,
            index_dir=args.index,
            retriever_url=args.retriever_url,
            build_index=args.build_index,
            squeezer=args.squeezer,
            variant_mix=mix,
            limit=args.limit,
            seed=args.seed,
            config=config,
        )
        summary = prepare_demos(job)
    except EnvSetupError as error:
        raise UserError(str(error)) from error
    parts = ", ".join(f"{name} {d['kept']}/{d['questions']}" for name, d in summary["datasets"].items())
    return (
        f"demos: {summary['kept']} of {summary['questions']} questions ({parts}; squeezer {args.squeezer}, "
        f"topk {args.topk}) written to {args.out} (demos.jsonl, demos_summary.json) in {summary['seconds']} s"
    )


JOBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], str]]] = {
    "qa": ("a benchmark split as FlashRAG jsonl + verl parquet (+ context corpus)", _add_qa, _run_qa),
    "corpus": ("a corpus as wiki-18 jsonl", _add_corpus, _run_corpus),
    "mix": ("a shuffled deterministic training mix of verl parquet files", _add_mix, _run_mix),
    "demos": ("real-data demonstrations played through the environment, for SFT", _add_demos, _run_demos),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    jobs = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for name, (help_text, add, _) in JOBS.items():
        add(jobs.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    try:
        print(JOBS[args.job][2](args))
    except OSError as error:  # a missing input, or an --out that is a file, a folder or not writable: one line
        raise UserError(str(error)) from error
    return 0
