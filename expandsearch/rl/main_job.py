"""The main job (``expandsearch train``, ``make demo``): [make the artifacts →] warm start → RL → evaluation.

Two halves. The first *makes artifacts*: with a ``data.world`` section the synthetic world recipe writes a world,
its BM25 index and (``warm_start.kind: world_expert``) a cloned tiny policy (:mod:`expandsearch.rl.world`);
with ``warm_start.kind: sft`` a pretrained policy is fine-tuned on demonstrations (``expandsearch prepare
demos``). The second *trains on artifacts*, whatever made them: verl-schema parquet files, an index directory or
retriever servers, a policy model spec, a squeezer — the same settings the verl backend reads.

Everything lands in ``config.run_dir``::

    config.yaml        the resolved configuration (a resumed run must match it)
    world/, index/     the synthetic world and its BM25 index (world runs only)
    warm_start/        the warm-started policy (transformers layout) and its record (world_expert or sft)
    checkpoints/       step_NNNNNNN/ (model, optimizer, scheduler, RNG, step, data position)
    metrics.jsonl      one row per RL step; tensorboard/ beside it
    policy/            the policy after RL (transformers layout)
    summary.json       held-out EM of the warm start, after RL, and after RL with one query per search
    *.png              training curves

Each stage that already finished is reused when the job runs again (``--resume`` continues RL from the last
checkpoint), so a killed run loses at most the steps since its last checkpoint. Before anything heavy runs,
:func:`expandsearch.rl.sources.preflight` checks every file, model path and server the config names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_env.episode import EpisodeConfig
    from agent_env.rollout import EpisodeInput
    from expandsearch.rl.config import TrainConfig
    from expandsearch.rl.sources import Questions, Searcher
    from expandsearch.rl.tasks import Task
    from expandsearch.rl.trainer import Trainer

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
SFT_RECORD = "sft.json"
"""Written into an SFT warm start's directory: its settings, its demonstrations' digests and its metrics."""
EVALUATIONS = ("warm start", "after RL", "after RL, 1 query/search")
"""The rows of the summary table: the policy before RL, after RL, and after RL with only its first variant run."""
EVAL_DIR = Path("eval") / "held_out"
"""Under the run directory: the final evaluations' per-question rows, as ``expandsearch eval`` writes them."""
PAIRED = (("after RL", "warm start"), ("after RL, 1 query/search", "after RL"))
"""(evaluation, baseline) pairs compared question by question in the summary (``paired``)."""


class RunConfigMismatch(ValueError):
    """``--resume`` with a configuration other than the run's own."""


@contextmanager
def stage(timings: dict[str, float], name: str, log: Callable[[str], None]) -> Iterator[None]:
    log(f"== {name}")
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started
    log(f"   {name}: {timings[name]:.1f} s")


def run_main_job(config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole job; returns the summary also written to ``summary.json``."""
    import torch

    from expandsearch.rl.sources import preflight

    preflight(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    run_dir = Path(config.run_dir)
    _record_config(config, run_dir, resume)
    timings: dict[str, float] = {}
    on_artifacts = make_artifacts(config, run_dir, timings, log)
    summary = train_on_artifacts(on_artifacts, run_dir, timings, resume=resume, log=log)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    if config.logging.plots:
        _plot(run_dir)
    return summary


def make_artifacts(
    config: TrainConfig, run_dir: Path, timings: dict[str, float], log: Callable[[str], None]
) -> TrainConfig:
    """The first half: run the world recipe and the warm start; returns the config on their artifacts (its
    policy the warm-started one, ``warm_start.kind`` none, and for a world run its files and index)."""
    from expandsearch.rl import world

    if config.data.world is not None:
        with stage(timings, "world", log):
            world_dir = world.ensure_world(config, run_dir, log)
        with stage(timings, "index", log):
            index_dir = world.ensure_index(world_dir, run_dir / "index")
        policy = config.policy.model
        if config.warm_start.kind == "world_expert":
            with stage(timings, "warm start", log):
                policy = str(world.ensure_world_expert(config, world_dir, run_dir / "warm_start", log))
        config = world.world_artifacts(config, world_dir, index_dir, policy)
    if config.warm_start.kind == "sft":
        with stage(timings, "warm start", log):
            policy = str(ensure_sft(config, run_dir / "warm_start", log))
        config = replace(config, policy=replace(config.policy, model=policy))
    return replace(config, warm_start=replace(config.warm_start, kind="none"))


def train_on_artifacts(
    config: TrainConfig, run_dir: Path, timings: dict[str, float], *, resume: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """The second half: GRPO/PPO from ``policy.model`` on the task's data, then the held-out evaluations."""
    from expandsearch.rl.sources import make_searcher
    from expandsearch.rl.tasks import build_task

    if config.task == "coaug":
        from expandsearch.rl.coaug import train_coaug

        return train_coaug(config, run_dir, timings, resume=resume, log=log)
    task = build_task(config)
    searcher = make_searcher(config.retriever)
    with stage(timings, "rl", log):
        trainer = build_trainer(config, config.policy.model, task, searcher)
        try:
            train(trainer, run_dir, resume=resume, log=log, evaluate=_eval_during_training)
            _save_policy(trainer, run_dir / "policy")
        finally:
            trainer.close()
    with stage(timings, "evaluation", log):
        evaluations = evaluate_all(config, config.policy.model, run_dir, task.held_out, searcher)
    return {"evaluations": evaluations, "paired": paired(evaluations), "timings_s": timings, "run_dir": str(run_dir)}


def _record_config(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    """Write ``config.yaml``; when resuming, refuse a config that differs from the run's in anything but steps
    (and the ``verl`` section, which only ``--backend verl`` reads)."""
    import yaml

    from expandsearch.config import config_to_dict

    path = run_dir / CONFIG_FILE
    current = config_to_dict(config)
    if resume and path.is_file():
        recorded = yaml.safe_load(path.read_text()) or {}
        # steps may grow; the verl section does not touch an embedded run (and runs recorded before it lack it)
        differing = sorted(key for key in _diff(recorded, current) - {"steps"} if key.split(".")[0] != "verl")
        if differing:
            raise RunConfigMismatch(f"--resume with a config that differs from {path} in: {', '.join(differing)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(current, sort_keys=False))


def _diff(left: Any, right: Any, prefix: str = "") -> set[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        keys = set(left) | set(right)
        return set().union(*(_diff(left.get(k), right.get(k), f"{prefix}{k}.") for k in keys)) if keys else set()
    return set() if left == right else {prefix.rstrip(".")}


# --- stages ----------------------------------------------------------------------------------------------------------


def ensure_sft(config: TrainConfig, out_dir: Path, log: Callable[[str], None]) -> Path:
    """``policy.model`` fine-tuned on the demonstrations (masked loss on policy tokens), in ``out_dir``; reused
    when made with the same model, settings and demonstration files."""
    from expandsearch.config import config_to_dict
    from expandsearch.rl.sources import load_policy
    from expandsearch.rl.world import recorded
    from expandsearch.sft import BCConfig, behaviour_cloning, read_demonstrations, save_policy
    from retriever_server.index_dir import file_sha256

    section = config.warm_start.sft
    settings = {
        "model": config.policy.model,
        "policy": config_to_dict(config.policy),
        "sft": config_to_dict(section),
        "seed": config.seed,
        "demonstrations_sha256": [file_sha256(Path(path)) for path in section.demonstrations],
    }
    if recorded(out_dir / SFT_RECORD, "settings") == settings:
        log(f"   reusing the warm start in {out_dir}")
        return out_dir
    model, tokenizer = load_policy(config.policy.model, config.policy)
    demonstrations = read_demonstrations(section.demonstrations, tokenizer, config.rollout.episode.protocol)
    log(f"   {len(demonstrations)} demonstrations from {', '.join(section.demonstrations)}")
    loop = BCConfig(
        steps=section.steps,
        batch_size=section.batch_size,
        lr=section.lr,
        warmup_steps=section.warmup_steps,
        seed=config.seed,
        log_every=max(1, section.steps // 10),
    )
    metrics = behaviour_cloning(model, tokenizer, demonstrations, loop, log=lambda row: log(f"   sft {_sft_line(row)}"))
    save_policy(model, tokenizer, out_dir)
    metrics.pop("history", None)
    (out_dir / SFT_RECORD).write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=1) + "\n")
    return out_dir


def _sft_line(row: dict[str, float]) -> str:
    return f"step {row['bc/step']:4.0f}  loss {row['bc/loss']:.4f}  lr {row['bc/lr']:.2e}  {row['perf/seconds']:.1f} s"


def build_trainer(config: TrainConfig, policy: str, task: Task, searcher: Searcher) -> Trainer:
    """The trainer for ``task``, RL starting from the policy spec ``policy``, episodes searching ``searcher()``."""
    from agent_env.engine import TransformersEngine
    from agent_env.episode import AgentEnv
    from agent_env.squeezers import make_squeezer
    from expandsearch.rl.sources import load_policy
    from expandsearch.rl.trainer import Trainer

    model, tokenizer = load_policy(policy, config.policy)
    rollout = config.rollout
    engine = TransformersEngine(model, tokenizer, max_batch_size=rollout.max_batch_size, seed=config.seed)
    env = AgentEnv(engine, tokenizer, searcher(), make_squeezer(config.squeezer), rollout.episode)
    return Trainer(config, model, tokenizer, env, task)


def train(
    trainer: Trainer,
    run_dir: Path,
    *,
    resume: bool,
    log: Callable[[str], None],
    evaluate: Callable[[Trainer], dict[str, float]] | None = None,
) -> None:
    """RL steps up to ``config.steps``: metrics to jsonl/TensorBoard/W&B, checkpoints every N steps and at the end,
    and every ``eval.every`` steps the ``evaluate`` of the trainer (default: greedy held-out episodes; a task
    without episodes passes None)."""
    from tqdm import tqdm

    from expandsearch.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from expandsearch.config import config_to_dict
    from expandsearch.tracking import MetricsTracker

    config = trainer.config
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        trainer.load_state_dict(load_checkpoint(checkpoint))
        log(f"   resumed from {checkpoint} (step {trainer.step})")
    elif resume:
        log("   no checkpoint to resume from: starting RL at step 0")
    logging = config.logging
    tracker = MetricsTracker(
        run_dir,
        tensorboard=logging.tensorboard,
        wandb=logging.wandb,
        wandb_project=logging.wandb_project,
        run_name=run_dir.name,
        config=config_to_dict(config),
        # without a checkpoint RL starts over at step 0, whose warm-start evaluation is logged again: drop every row
        resume_step=trainer.step if checkpoint is not None else -1,
    )
    every = config.eval.every if evaluate is not None else 0
    with tracker, tqdm(total=config.steps, initial=trainer.step, disable=not logging.progress, desc="RL") as bar:
        if every and checkpoint is None and evaluate is not None:
            tracker.log(0, evaluate(trainer))  # the warm start: where the EM curve starts
        while trainer.step < config.steps:
            metrics = trainer.train_step()
            if every and trainer.step % every == 0 and evaluate is not None:
                metrics |= evaluate(trainer)
            tracker.log(trainer.step, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", kl=f"{metrics.get('actor/kl', 0):.4f}")
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                save_checkpoint(run_dir, trainer.step, trainer.state_dict(), keep_last=config.keep_checkpoints)


def _eval_during_training(trainer: Trainer) -> dict[str, float]:
    return {f"eval/{key}": value for key, value in evaluate_trainer_policy(trainer, trainer.eval_inputs).items()}


def evaluate_trainer_policy(trainer: Trainer, inputs: Sequence[EpisodeInput]) -> dict[str, float]:
    """Greedy episodes of the trainer's current policy on ``inputs``, through its own environment: the metrics."""
    return dict(greedy_evaluation(trainer, inputs)["metrics"])


def greedy_evaluation(trainer: Trainer, inputs: Sequence[EpisodeInput]) -> dict[str, Any]:
    """:func:`~expandsearch.rl.evaluation.evaluate_policy` of the trainer's current policy through its own
    environment: metrics, EM by question type and the EM of every question."""
    from expandsearch.rl.evaluation import evaluate_policy
    from expandsearch.rl.sources import Questions

    config, task = trainer.config, trainer.task
    questions = Questions(list(inputs), {**task.train.types, **task.held_out.types})
    return evaluate_policy(
        trainer.policy,
        trainer.tokenizer,
        trainer.env.search,
        questions,
        config.rollout.episode,
        config.squeezer,
        trainer.loop,
    )


def _save_policy(trainer: Trainer, out_dir: Path) -> None:
    from expandsearch.sft import save_policy

    save_policy(trainer.policy, trainer.tokenizer, out_dir)


def evaluate_all(
    config: TrainConfig, warm_start: str, run_dir: Path, held_out: Questions, searcher: Searcher
) -> dict[str, Any]:
    """Greedy held-out evaluations of :data:`EVALUATIONS`: the policy RL started from, the policy after RL, and
    the latter restricted to one query per search. Every question's row and trace goes to
    ``run_dir/eval/held_out/<evaluation>.jsonl``, the files ``expandsearch eval`` writes."""
    from expandsearch.rl.evaluation import evaluate_model

    questions = held_out.limit(config.eval.questions)
    episode: EpisodeConfig = config.rollout.episode
    one_query = replace(episode, search_variants=1)
    policy_dir = str(run_dir / "policy")
    runs = [(warm_start, episode), (policy_dir, episode), (policy_dir, one_query)]
    out_dir = run_dir / EVAL_DIR
    return {
        name: evaluate_model(
            spec,
            config.policy,
            searcher,
            questions,
            settings,
            config.squeezer,
            out_dir / f"{file_name(name)}.jsonl",
        )
        for name, (spec, settings) in zip(EVALUATIONS, runs, strict=True)
    }


def file_name(name: str) -> str:
    """``after RL, 1 query/search`` → ``after_rl_1_query_search``: the evaluation's file name."""
    return "_".join("".join(char if char.isalnum() else " " for char in name.lower()).split())


def paired(evaluations: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each :data:`PAIRED` comparison, keyed ``"EVALUATION vs BASELINE"`` (see ``paired_difference``)."""
    from expandsearch.rl.evaluation import paired_difference

    return {
        f"{name} vs {baseline}": paired_difference(
            evaluations[baseline]["reward_by_question"], evaluations[name]["reward_by_question"]
        )
        for name, baseline in PAIRED
    }


def _plot(run_dir: Path) -> None:
    from expandsearch.tracking import METRICS_FILE, plot_metrics, read_metrics

    rows = read_metrics(run_dir / METRICS_FILE)
    # evaluations during training (eval/… keys, every eval.every steps) are drawn as their own markers
    train_rows = [{key: value for key, value in row.items() if not key.startswith("eval/")} for row in rows]
    eval_rows = [row for row in rows if any(key.startswith("eval/") for key in row)]
    plot_metrics(train_rows, run_dir, eval_rows=eval_rows)


def build_world_trainer(
    config: TrainConfig, policy: str | Path, world_dir: Path, index_dir: Path, train: Questions | None = None
) -> Trainer:
    """:func:`build_trainer` on a world's artifacts (tests, benchmarks): its parquet splits, a BM25 index built in
    ``index_dir`` when missing, RL from ``policy``; ``train`` replaces the training questions."""
    from expandsearch.rl import world
    from expandsearch.rl.sources import make_searcher
    from expandsearch.rl.tasks import build_task

    on_world = world.world_artifacts(config, world_dir, world.ensure_index(world_dir, index_dir), str(policy))
    task = build_task(on_world)
    if train is not None:
        task = replace(task, train=train)  # type: ignore[type-var]
    return build_trainer(on_world, str(policy), task, make_searcher(on_world.retriever))
