"""Running an evaluation: every dataset x method through one environment, streamed to jsonl, resumable.

:func:`run_evaluation` is the whole job behind ``expandsearch eval``: it checks the output directory against the
run's settings (``eval.store``), loads the policy once (:func:`agent_env.assembly.build_env`), plays every
dataset x method, and writes ``results.json``, ``results.md`` and ``results.png`` (``eval.report``)::

    results = run_evaluation(spec, datasets, ["rag", "expandsearch"], Path("runs/eval"))

:func:`evaluate` is the part that needs only a built :class:`~agent_env.episode.AgentEnv` (any engine, a scripted
policy included). Each dataset x method runs through one :class:`~agent_env.rollout.RolloutRunner` over the
shared engine, retriever and squeezer with the method's episode settings; up to ``concurrency`` episodes are in
flight, so the engine, the search backend and the squeezer batch across them. Each finished question is
appended to ``OUT/<dataset>/<method>.jsonl`` at once; questions already there are not played again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent_env.assembly import EnvSetupError, EnvSpec
from agent_env.episode import AgentEnv
from agent_env.rollout import EpisodeInput, RolloutRunner
from data_prep.formats import QAExample
from eval.datasets import EvalDataset, for_index_corpus
from eval.fallback import ANSWER_FALLBACKS
from eval.methods import AS_CONFIGURED, METHODS, Method
from eval.metrics import aggregate
from eval.records import example_record
from eval.report import write_reports
from eval.store import ResultsFile, check_run_settings, write_run_settings

Log = Callable[[str], None]

PROGRESS_MIN_STEP = 25
"""A progress line at most every this many questions."""

EPISODE_KEYS_SET_BY_METHODS = ("template", "temperature")
"""Episode settings every method sets itself (so not recorded as the run's)."""


async def evaluate(
    env: AgentEnv,
    datasets: Sequence[EvalDataset],
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    concurrency: int = 64,
    answer_fallback: str = "none",
    log: Log = print,
) -> dict[str, dict[str, dict[str, float]]]:
    """Play every dataset x method (resuming from ``out_dir``); ``{dataset: {method: metrics}}``.

    Each metrics dict is :func:`eval.metrics.aggregate` over the dataset's examples, plus ``seconds`` (time this
    call spent on it) and ``played`` (questions played by this call; the others were already in the jsonl).
    ``answer_fallback`` (``eval.fallback``) adds the fallback-scored metrics to every row written.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    check_answer_fallback(answer_fallback)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dataset in datasets:
        results[dataset.name] = {}
        for name in methods:
            path = Path(out_dir) / dataset.name / f"{name}.jsonl"
            results[dataset.name][name] = await evaluate_method(
                env, name, dataset, path, concurrency, log, answer_fallback=answer_fallback
            )
    return results


def check_answer_fallback(answer_fallback: str) -> None:
    """ValueError for an ``answer_fallback`` that ``eval.fallback`` does not know (before anything loads)."""
    if answer_fallback not in ANSWER_FALLBACKS:
        raise ValueError(f"unknown answer fallback {answer_fallback!r}; known: {', '.join(ANSWER_FALLBACKS)}")


async def evaluate_method(
    env: AgentEnv,
    name: str,
    dataset: EvalDataset,
    path: Path,
    concurrency: int,
    log: Log,
    *,
    answer_fallback: str = "none",
) -> dict[str, float]:
    """One dataset x method: play the questions ``path`` lacks, then aggregate all of the dataset's rows."""
    method = METHODS[name]
    method_env = replace(env, config=method.episode_config(env.config))
    with ResultsFile(path) as results:
        todo = [example for example in dataset.examples if example.id not in results]
        done = len(dataset.examples) - len(todo)
        log(f"{dataset.name} / {name}: {len(todo)} to play" + (f", {done} already in {path}" if done else ""))
        started = time.perf_counter()
        progress = _progress(f"{dataset.name} / {name}", len(todo), log)
        await play_examples(
            method_env,
            method,
            todo,
            results.append,
            concurrency=concurrency,
            progress=progress,
            answer_fallback=answer_fallback,
        )
        seconds = time.perf_counter() - started
        rows = [results.records[example.id] for example in dataset.examples]
    metrics = {**aggregate(rows), "seconds": seconds, "played": float(len(todo))}
    if rows:
        log(f"{dataset.name} / {name}: EM {metrics['em']:.3f} over {len(rows)} questions ({seconds:.1f} s)")
    return metrics


def _progress(label: str, total: int, log: Log) -> Callable[[], None]:
    """A callback to call per finished question: logs about every tenth of a long run."""
    step = max(PROGRESS_MIN_STEP, -(-total // 10))
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count % step == 0 and count < total:
            log(f"{label}: {count}/{total}")

    return tick


RecordSink = Callable[[dict[str, Any]], None]
"""Where :func:`play_examples` hands each finished question's record (a results file's ``append``, a dict)."""


async def play_examples(
    env: AgentEnv,
    method: Method,
    examples: Sequence[QAExample],
    record: RecordSink,
    *,
    concurrency: int = 64,
    progress: Callable[[], None] | None = None,
    answer_fallback: str = "none",
) -> None:
    """Play ``examples`` with at most ``concurrency`` in flight, handing each record to ``record`` as its episode
    ends (``env`` already carries the method's episode settings).

    Each question is its own ``runner.run([...])`` call on the one runner, because ``RolloutRunner.run`` hands
    back its trajectories only when all of them have ended, and a record must be written when its episode ends
    for an interrupted run to lose no finished work; the engine batches across the calls all the same.
    """
    runner = RolloutRunner(env, max_concurrency=1)  # concurrency is bounded here, across the per-question calls
    slots = asyncio.Semaphore(concurrency)

    async def play(example: QAExample) -> None:
        async with slots:
            prepared = await method.prepare(env, example.question)
            episode = EpisodeInput(prepared.question, tuple(example.golden_answers), example.id)
            (trajectory,) = await runner.run([episode])
        row = example_record(
            example,
            trajectory,
            environment_turns=prepared.environment_turns,
            retrieves=method.retrieves,
            answer_fallback=answer_fallback,
        )
        record(row)
        if progress is not None:
            progress()

    tasks = [asyncio.ensure_future(play(example)) for example in examples]
    try:
        await asyncio.gather(*tasks)
    except BaseException:  # as RolloutRunner does: a failing episode cancels the others and propagates as itself
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def greedy_records(
    env: AgentEnv, examples: Sequence[QAExample], *, concurrency: int = 64
) -> list[dict[str, Any]]:
    """The records of greedy episodes on ``examples`` with ``env``'s own episode settings (template, variants,
    turns), in the examples' order: the evaluator of the trainer and the warm starts, the same one as
    ``expandsearch eval``'s (same episodes, same rows, same metrics)."""
    method_env = replace(env, config=AS_CONFIGURED.episode_config(env.config))
    by_id: dict[str, dict[str, Any]] = {}
    await play_examples(
        method_env, AS_CONFIGURED, examples, lambda row: by_id.__setitem__(row["id"], row), concurrency=concurrency
    )
    return [by_id[example.id] for example in examples]


def run_settings(spec: EnvSpec, datasets: Sequence[EvalDataset], answer_fallback: str = "none") -> dict[str, Any]:
    """What this run's results depend on, for ``run.json``; checks the model and index (one-line errors)."""
    episode = {key: value for key, value in asdict(spec.config).items() if key not in EPISODE_KEYS_SET_BY_METHODS}
    return {
        "model": model_identity(spec.model),
        "engine_url": spec.engine_url,
        "dtype": spec.engine_options.get("dtype"),  # numerics; device and batch size are how, not what, it runs
        "retriever": retriever_identity(spec),
        "squeezer": spec.squeezer,
        "episode": episode,
        "answer_fallback": answer_fallback,  # the rows hold fallback-scored metrics or not
        # the file's checksum too: a file re-prepared in place (other questions, same path) is another dataset
        "datasets": {dataset.name: dataset_identity(dataset) for dataset in datasets},
    }


def dataset_identity(dataset: EvalDataset) -> dict[str, str]:
    """The dataset's file and its sha256."""
    from retriever_server.index_dir import file_sha256

    return {"file": str(dataset.spec.path), "sha256": file_sha256(dataset.spec.path)}


def model_identity(model: str) -> dict[str, str]:
    """The model's path and a fingerprint of its files (names, sizes, modification times).

    A model retrained in place gets another fingerprint, so its results are not mixed with the old ones.
    Raises FileNotFoundError (a one-line error) when there is no model.
    """
    from agent_env.models import PACKAGED_MODELS, resolve_model_path

    directory, gguf_file = resolve_model_path(model)
    if model in PACKAGED_MODELS:
        return {"name": model}
    files = [directory / gguf_file] if gguf_file else sorted(path for path in directory.iterdir() if path.is_file())
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return {"path": str(directory.resolve() / (gguf_file or "")), "files": digest.hexdigest()[:16]}


def retriever_identity(spec: EnvSpec) -> dict[str, Any]:
    """The retriever URL, or the index directory with its kind and corpus checksum (a rebuilt index differs)."""
    if spec.index_dir is None:
        return {"url": spec.retriever_url}
    from retriever_server.index_dir import IndexDirError, read_manifest

    try:
        manifest = read_manifest(spec.index_dir)
    except IndexDirError as error:
        raise EnvSetupError(f"cannot load index {spec.index_dir}: {error}") from error
    corpus = manifest.get("corpus", {})
    return {
        "index": str(Path(spec.index_dir).resolve()),
        "kind": manifest["kind"],
        "corpus_sha256": corpus.get("sha256"),
        "passages": corpus.get("passages"),
    }


def build_results(
    per_method: Mapping[str, Mapping[str, Mapping[str, float]]],
    datasets: Sequence[EvalDataset],
    methods: Sequence[str],
    settings: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """The results dict of ``eval.report`` (and ``results.json``)."""
    return {
        "results": {dataset: dict(by_method) for dataset, by_method in per_method.items()},
        "datasets": {
            dataset.name: {"file": str(dataset.spec.path), "note": dataset.spec.note, "examples": len(dataset.examples)}
            for dataset in datasets
        },
        "methods": list(methods),
        "settings": dict(settings),
        "seconds": seconds,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_evaluation(
    spec: EnvSpec,
    datasets: Sequence[EvalDataset],
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    concurrency: int = 64,
    answer_fallback: str = "none",
    log: Log = print,
) -> dict[str, Any]:
    """The whole job: check ``out_dir``, load the policy once, play everything, write the reports.

    Everything that can fail cheaply (model path, index, retriever, squeezer spec, a directory of another run)
    fails before the policy loads, with a one-line reason (EnvSetupError, FileNotFoundError, RunMismatchError).
    """
    check_answer_fallback(answer_fallback)
    settings = check_run_settings(out_dir, run_settings(spec, datasets, answer_fallback))
    # supporting ids name passages of the questions' own corpus: scored only against an index over that corpus
    corpus_sha256 = settings["retriever"].get("corpus_sha256")
    datasets = [for_index_corpus(dataset, corpus_sha256) for dataset in datasets]
    started = time.perf_counter()
    play = _Play(concurrency, answer_fallback, log)
    per_method = asyncio.run(_evaluate_with_env(spec, settings, datasets, methods, Path(out_dir), play))
    results = build_results(per_method, datasets, methods, settings, time.perf_counter() - started)
    write_reports(results, out_dir)
    return results


@dataclass(frozen=True)
class _Play:
    """How the questions are played and recorded: episodes in flight, the answer fallback, the progress log."""

    concurrency: int
    answer_fallback: str
    log: Log


async def _evaluate_with_env(
    spec: EnvSpec,
    settings: Mapping[str, Any],
    datasets: Sequence[EvalDataset],
    methods: Sequence[str],
    out_dir: Path,
    play: _Play,
) -> dict[str, dict[str, dict[str, float]]]:
    from agent_env.assembly import build_env, close_env

    env = await build_env(spec)
    try:
        # written once the environment stands, so a typo in a path never records settings that make no results
        write_run_settings(out_dir, settings)
        return await evaluate(
            env,
            datasets,
            methods,
            out_dir,
            concurrency=play.concurrency,
            answer_fallback=play.answer_fallback,
            log=play.log,
        )
    finally:
        await close_env(env)
