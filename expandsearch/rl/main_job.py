"""The main job (``expandsearch train``, ``make demo``): world → BM25 index → warm start → RL → held-out evaluation.

Everything lands in ``config.run_dir``::

    config.yaml        the resolved configuration (a resumed run must match it)
    world/             the synthetic world (corpus, splits, world.json)
    index/             its BM25 index (``expandsearch chat --index``)
    warm_start/        the behaviour-cloned policy (transformers layout) and warm_start.json
    checkpoints/       step_NNNNNNN/ (model, optimizer, scheduler, RNG, step, data position)
    metrics.jsonl      one row per RL step; tensorboard/ beside it
    policy/            the policy after RL (transformers layout)
    summary.json       held-out EM of the warm start, after RL, and after RL with one query per search
    *.png              training curves

Each stage that already finished is reused when the job runs again (``--resume`` continues RL from the last
checkpoint), so a killed demo loses at most the steps since its last checkpoint.
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
    from expandsearch.rl.trainer import Trainer
    from expandsearch.warm_start import WorldData
    from retriever_server.bm25 import BM25Index

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
EVALUATIONS = ("warm start", "after RL", "after RL, 1 query/search")
"""The rows of the summary table: the policy before RL, after RL, and after RL with only its first variant run."""
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

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    run_dir = Path(config.run_dir)
    _record_config(config, run_dir, resume)
    timings: dict[str, float] = {}
    with stage(timings, "world", log):
        world_dir = ensure_world(config, run_dir, log)
    with stage(timings, "index", log):
        world, index = ensure_index(world_dir, run_dir / "index")
    with stage(timings, "warm start", log):
        warm_start_dir = ensure_warm_start(config, world_dir, run_dir / "warm_start", log)
    with stage(timings, "rl", log):
        trainer = build_trainer(config, warm_start_dir, world, index)
        try:
            train(trainer, run_dir, resume=resume, log=log)
            _save_policy(trainer, run_dir / "policy")
        finally:
            trainer.close()
    with stage(timings, "evaluation", log):
        evaluations = evaluate_all(config, warm_start_dir, run_dir / "policy", world, index)
    summary = {"evaluations": evaluations, "paired": paired(evaluations), "timings_s": timings, "run_dir": str(run_dir)}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    if config.logging.plots:
        _plot(run_dir)
    return summary


def _record_config(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    """Write ``config.yaml``; when resuming, refuse a config that differs from the run's in anything but steps."""
    import yaml

    from expandsearch.config import config_to_dict

    path = run_dir / CONFIG_FILE
    current = config_to_dict(config)
    if resume and path.is_file():
        recorded = yaml.safe_load(path.read_text()) or {}
        differing = sorted(_diff(recorded, current) - {"steps"})
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


def ensure_world(config: TrainConfig, run_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The configured world directory, or one generated under ``run_dir/world`` (reused when its recorded
    configuration is the one asked for, regenerated otherwise)."""
    from data_prep.synthetic import WORLD_FILE, WORLD_SIZES, generate_world, write_world

    if config.world.path:
        return Path(config.world.path)
    world_dir = run_dir / "world"
    wanted = replace(WORLD_SIZES[config.world.size], seed=config.world.seed)
    if _recorded(world_dir / WORLD_FILE, "config") == _plain(wanted):
        return world_dir
    if (world_dir / WORLD_FILE).is_file():
        log(f"   {world_dir} was generated with another world config: generating it again")
    write_world(generate_world(wanted), world_dir)
    return world_dir


def ensure_index(world_dir: Path, index_dir: Path) -> tuple[WorldData, BM25Index]:
    """The world and its BM25 index: an index directory (``expandsearch chat --index``, ``expandsearch eval
    --index``), built over the world's corpus unless one of exactly that corpus is there already."""
    from data_prep.synthetic import CORPUS_FILE
    from expandsearch.warm_start import WorldData
    from retriever_server.bm25 import BM25Index
    from retriever_server.index_dir import MANIFEST, build_index, file_sha256, load_index

    world = WorldData.load(world_dir)
    corpus = world_dir / CORPUS_FILE
    built_over = (_recorded(index_dir / MANIFEST, "corpus") or {}).get("sha256")
    if built_over != file_sha256(corpus):
        build_index(corpus, "bm25", index_dir, progress=False)
    index = load_index(index_dir)
    assert isinstance(index, BM25Index)
    return world, index


def ensure_warm_start(config: TrainConfig, world_dir: Path, out_dir: Path, log: Callable[[str], None]) -> Path:
    """The policy RL starts from: ``warm_start.init``, an earlier warm start in ``out_dir`` made with the same
    settings from the same world, or a new one."""
    from data_prep.synthetic import WORLD_FILE
    from expandsearch.warm_start import METRICS_FILE, build_world_policy

    if config.warm_start.init:
        return Path(config.warm_start.init)
    settings = warm_start_config(config)
    record_file = out_dir / METRICS_FILE
    same_settings = _recorded(record_file, "config") == _plain(settings)
    # like make: a world written after the warm start (regenerated with another config) makes it stale
    if same_settings and _newer(record_file, world_dir / WORLD_FILE):
        log(f"   reusing the warm start in {out_dir}")
        return out_dir
    build_world_policy(world_dir, out_dir, settings, log=log)
    return out_dir


def _recorded(path: Path, key: str) -> Any:
    """``key`` of the JSON file at ``path`` (None when the file is missing or unreadable)."""
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime >= than.stat().st_mtime


def _plain(settings: Any) -> Any:
    """A dataclass as the JSON it is recorded as (tuples become lists)."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(settings)))


def warm_start_config(config: TrainConfig) -> Any:
    from agent_env.tiny_model import TinyQwen2Config
    from expandsearch.warm_start import BCConfig, PretrainConfig, WarmStartConfig

    section = config.warm_start
    model = TinyQwen2Config(
        hidden_size=section.hidden_size,
        intermediate_size=section.intermediate_size,
        num_hidden_layers=section.layers,
        num_attention_heads=section.heads,
        num_key_value_heads=max(1, section.heads // 2),
    )
    bc = BCConfig(steps=section.steps, batch_size=section.batch_size, lr=section.lr, seed=config.seed)
    pretrain = PretrainConfig(steps=section.pretrain_steps, batch_size=section.pretrain_batch_size, lr=section.lr)
    return WarmStartConfig(
        pretrain=pretrain,
        bc=bc,
        model=model,
        model_seed=config.seed,
        vocab_size=section.vocab_size,
        demonstrations=section.demonstrations,
        name_shuffle=section.name_shuffle,
        variant_mix=section.variant_mix,
        count_facts=section.count_facts,
        eval_questions=section.eval_questions,
        squeezer=config.rollout.squeezer,
        episode=replace(config.rollout.episode, temperature=0.0),
    )


def build_trainer(config: TrainConfig, policy_dir: Path, world: WorldData, index: BM25Index) -> Trainer:
    from agent_env.engine import TransformersEngine
    from agent_env.episode import AgentEnv
    from agent_env.models import load_causal_lm
    from agent_env.search import LocalSearch
    from agent_env.squeezers import make_squeezer
    from expandsearch.rl.trainer import Trainer

    model, tokenizer = load_causal_lm(str(policy_dir), device=_device(config.device), dtype="float32")
    rollout = config.rollout
    engine = TransformersEngine(model, tokenizer, max_batch_size=rollout.max_batch_size, seed=config.seed)
    env = AgentEnv(engine, tokenizer, LocalSearch(index), make_squeezer(rollout.squeezer), rollout.episode)
    held_out = _inputs(world, "test")[: config.eval.during_training_questions]
    return Trainer(config, model, tokenizer, env, _inputs(world, "train"), held_out)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _inputs(world: WorldData, split: str) -> list[Any]:
    from agent_env.rollout import EpisodeInput

    return [EpisodeInput(e.question, tuple(e.golden_answers), e.id) for e in world.questions[split]]


def train(trainer: Trainer, run_dir: Path, *, resume: bool, log: Callable[[str], None]) -> None:
    """RL steps up to ``config.steps``: metrics to jsonl/TensorBoard/W&B, checkpoints every N steps and at the end."""
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
    with tracker, tqdm(total=config.steps, initial=trainer.step, disable=not logging.progress, desc="RL") as bar:
        if config.eval.every and checkpoint is None:
            tracker.log(0, _eval_during_training(trainer))  # the warm start: where the EM curve starts
        while trainer.step < config.steps:
            metrics = trainer.train_step()
            if config.eval.every and trainer.step % config.eval.every == 0:
                metrics |= _eval_during_training(trainer)
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
    environment: metrics, EM by question type and the reward of every question."""
    from expandsearch.rl.evaluation import evaluate_policy

    config = trainer.config
    return evaluate_policy(
        trainer.policy,
        trainer.tokenizer,
        trainer.env.search,
        inputs,
        config.rollout.episode,
        config.rollout.squeezer,
        trainer.loop,
    )


def _save_policy(trainer: Trainer, out_dir: Path) -> None:
    from expandsearch.warm_start import save_policy

    save_policy(trainer.policy, trainer.tokenizer, out_dir)


def evaluate_all(
    config: TrainConfig, warm_start_dir: Path, policy_dir: Path, world: WorldData, index: BM25Index
) -> dict[str, Any]:
    """Greedy held-out evaluations of :data:`EVALUATIONS` on the test split."""
    from expandsearch.rl.evaluation import evaluate_directory

    questions = _inputs(world, "test")
    if config.eval.questions:
        questions = questions[: config.eval.questions]
    types = {example.id: example.metadata.get("type", "all") for example in world.questions["test"]}
    episode: EpisodeConfig = config.rollout.episode
    one_query = replace(episode, search_variants=1)
    runs = [(warm_start_dir, episode), (policy_dir, episode), (policy_dir, one_query)]
    return {
        name: evaluate_directory(path, index, questions, settings, config.rollout.squeezer, types, config.device)
        for name, (path, settings) in zip(EVALUATIONS, runs, strict=True)
    }


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
