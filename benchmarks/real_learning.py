"""The real learning proof: SmolLM2-135M-Instruct prompted, after SFT on demonstrations, after GRPO, and after GRPO
with one query per search, on held-out real multi-hop questions.

The run ``train_configs/smollm2_hotpotqa_cpu.yaml`` describes, made from the samples the package ships
(``data_prep/sample_data``), with nothing trained on a question it is evaluated on:

- train: ``hotpotqa_distractor_dev300.jsonl`` and the first halves of the 2WikiMultihopQA and MuSiQue samples
  (demonstrations for SFT, questions for GRPO);
- held out: ``hotpotqa_distractor_dev300b.jsonl`` and the second halves (``--val-hotpotqa`` / ``--val-other``
  questions of each, sub-sampled with seed 0 as ``prepare qa --limit`` does);
- BM25 over the union of all six files' context paragraphs, the extractive squeezer.

Every artifact lands under ``--out`` and is reused when the script runs again (the main job reuses a finished SFT
and a finished run). It prints one table (EM, F1, cover-EM, valid-action rate, searches and variants per
episode, EM per question type) with the paired gained/lost counts and sign tests, and each stage's wall time::

    .venv/bin/python benchmarks/real_learning.py --out runs/real_learning [--steps 8] [--sft-steps 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from data_prep.samples import sample_file

HOTPOT_TRAIN = "hotpotqa/hotpotqa_distractor_dev300.jsonl"
HOTPOT_VAL = "hotpotqa/hotpotqa_distractor_dev300b.jsonl"
HALVED = {
    "2wikimultihopqa": "2wikimultihopqa/2wiki_dev_with_context80.jsonl",
    "musique": "musique/musique_ans_dev100.jsonl",
}
"""Samples split in two: the first half trains, the second is held out."""
CONFIG = "train_configs/smollm2_hotpotqa_cpu.yaml"


def split_halves(raw_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Each :data:`HALVED` sample as (first half, second half) jsonl files in ``raw_dir``."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    halves = {}
    for dataset, name in HALVED.items():
        lines = sample_file(name).read_text(encoding="utf-8").splitlines()
        middle = len(lines) // 2
        first, second = raw_dir / f"{dataset}_train.jsonl", raw_dir / f"{dataset}_val.jsonl"
        first.write_text("\n".join(lines[:middle]) + "\n", encoding="utf-8")
        second.write_text("\n".join(lines[middle:]) + "\n", encoding="utf-8")
        halves[dataset] = (first, second)
    return halves


def build_union_index(files: list[Path], out: Path) -> Path:
    """BM25 over the union of the files' context paragraphs (``prepare demos --build-index``'s), reused if built."""
    from data_prep.benchmarks import read_benchmark
    from data_prep.demos import INDEX_DIR, build_context_index

    if (out / INDEX_DIR / "manifest.json").is_file():
        return out / INDEX_DIR
    return build_context_index([question for path in files for question in read_benchmark(path)[1]], out)


def expandsearch(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("expandsearch")), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def prepare_qa(dataset: str, source: Path, split: str, out: Path, limit: int | None = None) -> Path:
    out = out / f"{dataset}_{split}"  # a distractor set's splits each index their own context corpus
    parquet = out / f"{split}.parquet"
    if not parquet.is_file():
        extra = ["--limit", str(limit)] if limit else []
        expandsearch("prepare", "qa", "--dataset", dataset, "--input", str(source), "--split", split,
                     "--out", str(out), *extra)  # fmt: skip
    return parquet


def prepare_demos(inputs: list[Path], index_dir: Path, out: Path, episode: dict[str, Any]) -> Path:
    """Demonstrations played with the RL config's episode budget (so SFT shows what RL will ask)."""
    demos = out / "demos.jsonl"
    if not demos.is_file():
        expandsearch(
            "prepare", "demos", "--input", *map(str, inputs), "--out", str(out), "--index", str(index_dir),
            "--tokenizer", "smollm2", "--max-turns", str(episode["max_turns"]),
            "--max-turn-tokens", str(episode["max_turn_tokens"]),
            "--max-observation-tokens", str(episode["max_observation_tokens"]),
            "--max-response-tokens", str(episode["max_response_tokens"]),
        )  # fmt: skip
    return demos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real_learning"))
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--val-hotpotqa", type=int, default=100, help="held-out HotpotQA questions")
    parser.add_argument("--val-other", type=int, default=20, help="held-out 2Wiki and MuSiQue questions, each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, as `expandsearch train` takes")
    args = parser.parse_args()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    config = load(args)
    out = args.out
    halves = split_halves(out / "raw")
    train_raw = [sample_file(HOTPOT_TRAIN), *(first for first, _ in halves.values())]
    val_raw = [sample_file(HOTPOT_VAL), *(second for _, second in halves.values())]
    index_dir = build_union_index(train_raw + val_raw, out / "retrieval")
    from expandsearch.config import config_to_dict

    demos = prepare_demos(train_raw, index_dir, out / "demos", config_to_dict(config.rollout.episode))
    data = out / "data"
    train_files = [prepare_qa("hotpotqa", train_raw[0], "train", data)]
    train_files += [prepare_qa(name, first, "train", data) for name, (first, _) in halves.items()]
    val_files = [prepare_qa("hotpotqa", val_raw[0], "dev", data, args.val_hotpotqa)]
    val_files += [prepare_qa(name, second, "dev", data, args.val_other) for name, (_, second) in halves.items()]
    timings["prepare"] = time.perf_counter() - started
    config = load(args, artifacts=(out, index_dir, demos, train_files, val_files))
    summary = run(config, out, timings)
    report(summary, out)


def load(args: argparse.Namespace, artifacts: tuple[Path, Path, Path, list[Path], list[Path]] | None = None) -> Any:
    from expandsearch.config import load_config
    from expandsearch.rl.config import TrainConfig
    from train_configs import config_path

    overrides = [f"steps={args.steps}", f"warm_start.sft.steps={args.sft_steps}", f"torch_threads={args.threads}"]
    if artifacts is not None:
        out, index_dir, demos, train_files, val_files = artifacts
        overrides += [
            f"run_dir={out / 'run'}",
            f"retriever.index={index_dir}",
            f"warm_start.sft.demonstrations=[{demos}]",
            f"data.train_files=[{','.join(map(str, train_files))}]",
            f"data.val_files=[{','.join(map(str, val_files))}]",
        ]
    return load_config(TrainConfig, config_path(Path(CONFIG).name), [*overrides, *args.overrides])


def run(config: Any, out: Path, timings: dict[str, float]) -> dict[str, Any]:
    """The main job (SFT → GRPO → three evaluations), then the prompted model on the same held-out questions."""
    from expandsearch.rl.evaluation import evaluate_model, paired_difference
    from expandsearch.rl.main_job import run_main_job
    from expandsearch.rl.sources import make_searcher
    from expandsearch.rl.tasks import build_task

    finished = Path(config.run_dir) / "summary.json"
    summary = json.loads(finished.read_text()) if finished.is_file() else run_main_job(config)
    prompted_file = out / "prompted.json"
    if prompted_file.is_file():
        prompted = json.loads(prompted_file.read_text())
    else:
        began = time.perf_counter()
        held_out = build_task(config).held_out.limit(config.eval.questions)
        prompted = evaluate_model(
            "smollm2", config.policy, make_searcher(config.retriever), held_out, config.rollout.episode,
            config.squeezer,
        )  # fmt: skip
        prompted["seconds"] = time.perf_counter() - began
        prompted_file.write_text(json.dumps(prompted, indent=1) + "\n")
    timings["prompted evaluation"] = prompted["seconds"]
    evaluations = {"prompted": prompted, **summary["evaluations"]}
    warm = evaluations["warm start"]["reward_by_question"]
    summary["evaluations"] = evaluations
    summary["paired"] = {
        "warm start (SFT) vs prompted": paired_difference(prompted["reward_by_question"], warm),
        **summary["paired"],
    }
    summary["timings_s"] = {**timings, **summary["timings_s"]}
    (out / "real_learning.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def report(summary: dict[str, Any], out: Path) -> None:
    from expandsearch.rl.report import summary_table

    print(summary_table(summary))
    print("\nwall time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in summary["timings_s"].items()))
    print(f"written: {out / 'real_learning.json'}")


if __name__ == "__main__":
    main()
