"""``expandsearch train --backend verl``: one of our training configs as a run of verl 0.9.1's PPO trainer.

- :func:`verl_overrides` translates a :class:`~expandsearch.rl.config.TrainConfig` into Hydra overrides of verl's
  ``ppo_trainer`` config, one small function per verl section; what verl cannot do is refused first, each refusal
  saying what to do instead (:func:`check_supported`).
- :func:`compose_verl_config` composes them with Hydra as ``python -m verl.trainer.main_ppo`` does, so a misspelled
  key fails on this machine, and :func:`validate_verl_config` runs the checks of verl's own that need no GPU.
- :func:`verl_command` is the command line: ``python -m verl.trainer.main_ppo …`` here, or
  ``ray job submit --address URL … -- python -m verl.trainer.main_ppo …`` on a cluster.
- :func:`run_verl` is what the CLI calls: check, then print the command (``--dry-run``) or run it.

Paths (data, model, index, run_dir) go to verl as written: Ray's actors read them, from the launch directory on
this machine and on whichever node they land on a cluster, so a cluster wants absolute paths that every node can
read. The agent loop (``train_configs/verl/agent_loops.yaml``) reads its retriever, squeezer and episode settings
from ``actor_rollout_ref.rollout.custom.expandsearch`` (:mod:`.settings`), which verl passes to every worker.

verl decides for itself what these fields decide for the embedded trainer, so they are not translated:
``policy.device`` and ``torch_threads`` (Ray places the workers), ``rollout.max_concurrency`` (the agent-loop
workers run every trajectory of a step at once), ``eval.questions`` and ``eval.during_training_questions`` (verl
validates on all of ``data.val_files``, capped by ``data.max_val_questions``, before training and every
``test_freq`` steps), and ``logging.tensorboard``, ``progress`` and ``plots`` (verl logs to the console and W&B).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_env import AGENT_LOOP_NAME
from agent_env.models import PACKAGED_MODELS
from expandsearch.verl_backend.settings import CUSTOM_KEY, AgentLoopSettings
from train_configs import config_path

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from expandsearch.rl.config import TrainConfig

VERL_MAIN = ("-m", "verl.trainer.main_ppo")
"""verl's PPO entry point, run as a module (it is a ``hydra.main``: overrides are its arguments)."""
VERL_CONFIG_NAME = "ppo_trainer"
"""The config ``verl.trainer.main_ppo`` composes (``verl/trainer/config/ppo_trainer.yaml``)."""
AGENT_LOOPS = "verl/agent_loops.yaml"
"""The shipped agent-loop registry, by its ``train_configs`` name."""
FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "WANDB_MODE",
    "VLLM_LOGGING_LEVEL",
    "VERL_LOGGING_LEVEL",
)
"""Variables a ``ray job submit`` carries to the cluster when they are set here; none of them is a secret, since
the command is printed (secrets belong in ``verl.ray_runtime_env`` or the cluster's environment)."""

Override = tuple[str, Any]
"""A Hydra key (with its ``+``/``++`` prefix, if any) and the plain value it gets."""


class VerlConfigError(ValueError):
    """A config verl cannot run, or overrides that verl's config or its validation rejects (one line)."""


# --- what verl cannot do ---------------------------------------------------------------------------------------


def check_supported(config: TrainConfig) -> None:
    """VerlConfigError listing every part of ``config`` verl cannot run, each with what to do instead."""
    problems = list(_refusals(config))
    if problems:
        raise VerlConfigError("--backend verl cannot run this config: " + "; ".join(problems))


def _refusals(config: TrainConfig) -> Iterator[str]:
    if config.task != "qa_em":
        yield f"task {config.task} runs on the embedded trainer only (the verl agent loop plays qa_em episodes)"
    if config.data.world is not None:
        yield (
            "data.world: verl reads parquet files, so write the world once (`expandsearch world --out DIR`, "
            "`expandsearch index --corpus DIR/corpus.jsonl --kind bm25 --out DIR/index`) and train on data.world=null "
            "data.train_files=[DIR/train.parquet] data.val_files=[DIR/test.parquet] retriever.index=/abs/DIR/index"
        )
    if config.warm_start.kind != "none":
        yield (
            f"warm_start.kind {config.warm_start.kind}: verl starts RL from policy.model as it is; fine-tune first "
            "(the embedded trainer's warm start, or verl's SFT trainer `python -m verl.trainer.sft_trainer`), then "
            "set policy.model to the fine-tuned directory and warm_start.kind=none"
        )
    if config.algorithm.filter_groups.enable and not config.verl.use_v1:
        yield (
            "algorithm.filter_groups: verl filters groups in its v1 trainer only; set verl.use_v1=true (which needs "
            "the transfer_queue package) or algorithm.filter_groups.enable=false"
        )
    yield from _model_refusals(config)
    yield from _batch_refusals(config)
    index = config.retriever.index
    if index is not None and not Path(index).is_absolute():
        yield (
            f"retriever.index {index!r} is relative: the agent-loop workers load it on every node, so give an "
            "absolute path every node can read (or retriever.urls of running servers)"
        )


def _model_refusals(config: TrainConfig) -> Iterator[str]:
    model = config.policy.model
    if model == "tiny" or model in PACKAGED_MODELS or model.lower().endswith(".gguf"):
        yield (
            f"policy.model {model!r}: verl loads a transformers model directory (config.json, tokenizer, weights); "
            "a .gguf file, a packaged name or the world's tiny policy is none (an embedded run's RUN_DIR/policy is)"
        )
    if config.policy.trainable != "all":
        yield f"policy.trainable {config.policy.trainable}: verl trains every parameter (set policy.trainable=all)"


def _batch_refusals(config: TrainConfig) -> Iterator[str]:
    mini, group = config.algorithm.mini_batch_size, config.rollout.group_size
    if mini % group:
        yield f"algorithm.mini_batch_size {mini} is not a multiple of rollout.group_size {group} (verl counts prompts)"
    gpus = config.verl.nnodes * config.verl.n_gpus_per_node
    if mini % gpus:
        yield f"algorithm.mini_batch_size {mini} episodes do not split evenly over the {gpus} GPUs verl trains on"


# --- the translation -------------------------------------------------------------------------------------------


def verl_overrides(config: TrainConfig, *, resume: bool = False) -> list[str]:
    """Hydra overrides of verl's ``ppo_trainer`` that run ``config``: ours first, ``verl.extra_overrides`` last
    (so they win); ``resume`` continues from the latest checkpoint in ``RUN_DIR/checkpoints``."""
    check_supported(config)
    pairs = [
        *_data(config),
        *_model(config),
        *_algorithm(config),
        *_actor(config),
        *_rollout(config),
        *_critic(config),
        *_trainer(config, resume),
    ]
    return [*(f"{key}={hydra_value(value)}" for key, value in pairs), *config.verl.extra_overrides]


def _data(config: TrainConfig) -> list[Override]:
    data = config.data
    return [
        ("data.train_files", list(data.train_files)),
        ("data.val_files", list(data.val_files)),
        ("data.train_batch_size", config.rollout.questions_per_step),
        ("data.max_prompt_length", config.verl.max_prompt_length),
        ("data.max_response_length", config.rollout.episode.max_response_tokens),
        ("data.train_max_samples", data.max_train_questions or -1),  # verl: -1 keeps all
        ("data.val_max_samples", data.max_val_questions or -1),
        ("data.seed", config.seed if data.shuffle_seed is None else data.shuffle_seed),
    ]


def _model(config: TrainConfig) -> list[Override]:
    policy = config.policy
    return [
        ("actor_rollout_ref.model.path", policy.model),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", policy.gradient_checkpointing),
        # FSDP keeps float32 master weights and computes in this dtype; the rollout engine serves in it
        ("actor_rollout_ref.actor.fsdp_config.dtype", policy.dtype),
        ("actor_rollout_ref.ref.fsdp_config.dtype", policy.dtype),
        ("actor_rollout_ref.rollout.dtype", policy.dtype),
    ]


def _algorithm(config: TrainConfig) -> list[Override]:
    algorithm = config.algorithm
    return [
        ("algorithm.adv_estimator", algorithm.estimator),  # grpo and gae are verl's names too
        ("algorithm.norm_adv_by_std_in_grpo", algorithm.norm_adv_by_std),
        ("algorithm.gamma", algorithm.gamma),
        ("algorithm.lam", algorithm.lam),
        ("algorithm.use_kl_in_reward", algorithm.use_kl_in_reward),
        ("algorithm.kl_penalty", algorithm.kl_reward_type),
        ("algorithm.kl_ctrl.type", "fixed"),
        ("algorithm.kl_ctrl.kl_coef", algorithm.kl_reward_coef),
        ("algorithm.filter_groups.enable", algorithm.filter_groups.enable),
        # verl's v1 replay buffer refills filtered groups without a cap, so max_num_gen_batches has no verl twin
        *([("algorithm.filter_groups.metric", "reward")] if algorithm.filter_groups.enable else []),
    ]


def _actor(config: TrainConfig) -> list[Override]:
    algorithm, actor = config.algorithm, "actor_rollout_ref.actor"
    return [
        # ours counts a mini-batch in episodes, verl in prompts (it multiplies by rollout.n itself)
        (f"{actor}.ppo_mini_batch_size", algorithm.mini_batch_size // config.rollout.group_size),
        (f"{actor}.ppo_micro_batch_size_per_gpu", algorithm.micro_batch_size),
        (f"{actor}.ppo_epochs", algorithm.ppo_epochs),
        (f"{actor}.use_kl_loss", algorithm.use_kl_loss),
        (f"{actor}.kl_loss_coef", algorithm.kl_loss_coef),
        (f"{actor}.kl_loss_type", algorithm.kl_loss_type),
        (f"{actor}.entropy_coeff", algorithm.entropy_coef),
        (f"{actor}.clip_ratio_low", algorithm.clip_ratio_low),
        (f"{actor}.clip_ratio_high", algorithm.clip_ratio_high),
        (f"{actor}.clip_ratio_c", algorithm.clip_ratio_c),
        (f"{actor}.loss_agg_mode", algorithm.loss_agg_mode),
        *_optim(f"{actor}.optim", config.optim.lr, config),
        # the reference policy's log-probs, micro-batched like the actor's forward passes
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", algorithm.micro_batch_size),
    ]


def _optim(prefix: str, lr: float, config: TrainConfig) -> list[Override]:
    optim = config.optim
    return [
        (f"{prefix}.lr", lr),
        (f"{prefix}.lr_warmup_steps", verl_warmup_steps(config)),
        (f"{prefix}.lr_scheduler_type", optim.schedule),
        (f"{prefix}.min_lr_ratio", optim.min_lr_ratio),
        (f"{prefix}.weight_decay", optim.weight_decay),
        (f"{prefix}.betas", list(optim.betas)),
        (f"{prefix}.clip_grad", optim.max_grad_norm),
    ]


def verl_warmup_steps(config: TrainConfig) -> int:
    """``optim.warmup_steps`` in verl's unit: ours counts optimizer updates, verl's scheduler steps once per
    training step (after the step's last mini-batch), so the warm-up is divided by the updates per step."""
    algorithm = config.algorithm
    updates_per_step = algorithm.ppo_epochs * config.episodes_per_step // algorithm.mini_batch_size
    return math.ceil(config.optim.warmup_steps / updates_per_step)


def _rollout(config: TrainConfig) -> list[Override]:
    episode, verl, rollout = config.rollout.episode, config.verl, "actor_rollout_ref.rollout"
    return [
        (f"{rollout}.name", verl.rollout_name),
        (f"{rollout}.n", config.rollout.group_size),
        (f"{rollout}.temperature", episode.temperature),
        (f"{rollout}.top_p", episode.top_p),
        (f"{rollout}.prompt_length", verl.max_prompt_length),
        (f"{rollout}.response_length", episode.max_response_tokens),
        (f"{rollout}.tensor_model_parallel_size", verl.tensor_model_parallel_size),
        (f"{rollout}.gpu_memory_utilization", verl.gpu_memory_utilization),
        (f"{rollout}.max_num_seqs", config.rollout.max_batch_size),
        (f"{rollout}.log_prob_micro_batch_size_per_gpu", config.algorithm.micro_batch_size),
        (f"{rollout}.calculate_log_probs", True),
        (f"{rollout}.multi_turn.enable", True),
        (f"{rollout}.multi_turn.max_assistant_turns", episode.max_turns),
        # held-out validation is greedy, as the embedded trainer's evaluation is
        (f"{rollout}.val_kwargs.temperature", 0),
        (f"{rollout}.val_kwargs.top_p", 1.0),
        (f"{rollout}.val_kwargs.do_sample", False),
        (f"{rollout}.val_kwargs.n", 1),
        (f"{rollout}.agent.agent_loop_config_path", agent_loop_config_path(config)),
        (f"{rollout}.agent.default_agent_loop", AGENT_LOOP_NAME),
        (f"{rollout}.agent.num_workers", verl.agent_num_workers),
        # `custom` is no key of verl's rollout.yaml (only of its RolloutConfig): `++` adds it, or sets it if a
        # later verl ships one
        (f"++{rollout}.custom", {CUSTOM_KEY: AgentLoopSettings.from_train_config(config).to_mapping()}),
    ]


def agent_loop_config_path(config: TrainConfig) -> str:
    """``verl.agent_loop_config``, or the shipped registry as installed here (absolute)."""
    return config.verl.agent_loop_config or str(config_path(AGENT_LOOPS))


def _critic(config: TrainConfig) -> list[Override]:
    if config.algorithm.estimator != "gae":
        return [("critic.enable", False)]  # said outright: verl otherwise warns that it guessed
    policy, algorithm = config.policy, config.algorithm
    return [
        ("critic.enable", True),
        ("critic.model.path", policy.model),  # the critic starts from the policy's backbone, as the embedded one
        ("critic.model.enable_gradient_checkpointing", policy.gradient_checkpointing),
        ("critic.fsdp.dtype", policy.dtype),
        ("critic.ppo_micro_batch_size_per_gpu", algorithm.micro_batch_size),
        ("critic.cliprange_value", algorithm.value_clip),
        *_optim("critic.optim", config.optim.critic_lr, config),
    ]


def _trainer(config: TrainConfig, resume: bool) -> list[Override]:
    verl, run_dir = config.verl, Path(config.run_dir)
    save_freq = config.checkpoint_every if verl.save_freq is None else verl.save_freq
    test_freq = (config.eval.every or -1) if verl.test_freq is None else verl.test_freq
    return [
        ("trainer.total_training_steps", config.steps),
        # verl stops at total_training_steps; an epoch holds at least one step, so this many never cut it short
        ("trainer.total_epochs", config.steps),
        ("trainer.save_freq", save_freq),
        ("trainer.test_freq", test_freq),
        ("trainer.max_actor_ckpt_to_keep", config.keep_checkpoints),
        ("trainer.max_critic_ckpt_to_keep", config.keep_checkpoints),
        ("trainer.critic_warmup", config.algorithm.critic_warmup),
        ("trainer.nnodes", verl.nnodes),
        ("trainer.n_gpus_per_node", verl.n_gpus_per_node),
        ("trainer.logger", ["console", "wandb"] if config.logging.wandb else ["console"]),
        ("trainer.project_name", verl.project_name or config.logging.wandb_project),
        ("trainer.experiment_name", verl.experiment_name or run_dir.name),
        ("trainer.default_local_dir", str(run_dir / "checkpoints")),
        ("trainer.resume_mode", "auto" if resume else "disable"),
        ("trainer.use_v1", verl.use_v1),
        ("hydra.run.dir", str(run_dir / "hydra")),  # verl's composed config is kept with the run, not in ./outputs
    ]


# --- Hydra's override grammar ----------------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def hydra_value(value: Any) -> str:
    """``value`` (None, bool, int, float, str, list, mapping) in Hydra's override grammar, such that Hydra reads back
    exactly this value: every string is quoted, so ``:``, ``/``, ``#``, ``,``, ``=`` and spaces stay text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise VerlConfigError(f"{value} cannot be a verl setting")
        return repr(value)
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_dict_key(key)}: {hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(item) for item in value) + "]"
    raise TypeError(f"no Hydra form for {type(value).__name__} {value!r}")


def _quoted(text: str) -> str:
    if "${" in text:  # OmegaConf would resolve it as an interpolation, on every worker that reads it
        raise VerlConfigError(f"{text!r} holds '${{', which verl's config would read as an interpolation")
    # Hydra's quoted strings: a quote is escaped by a backslash, so backslashes right before a quote (or the
    # closing one) are doubled first; other backslashes are literal. Double quotes, so that the shell quoting of
    # a printed command (single quotes) needs no escapes of its own.
    escaped = re.sub(r'\\+(?="|$)', lambda match: match.group(0) * 2, text).replace('"', '\\"')
    return f'"{escaped}"'


def _dict_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise VerlConfigError(f"{key!r} cannot be a key of a Hydra dict literal")
    return key


# --- composing and validating ----------------------------------------------------------------------------------


def verl_config_dir() -> Path:
    """verl's ``trainer/config`` folder, found without importing verl (whose import pulls in torch and ray)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise VerlConfigError("verl is not installed (pip install verl==0.9.1)")
    return Path(next(iter(spec.submodule_search_locations))) / "trainer" / "config"


def compose_verl_config(overrides: Sequence[str]) -> DictConfig:
    """verl's ``ppo_trainer`` config with ``overrides``, composed by Hydra as ``verl.trainer.main_ppo`` composes it;
    VerlConfigError with Hydra's message for an unknown key, a bad value or a malformed override."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with hydra.initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
            return hydra.compose(VERL_CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise VerlConfigError(f"verl's {VERL_CONFIG_NAME} config rejects the overrides: {_one_line(error)}") from error


def validate_verl_config(config: DictConfig) -> list[str]:
    """Run the checks of verl's own that need no GPU, model or data, and return their names.

    They are what ``verl.trainer.main_ppo`` runs before it starts Ray, and what its task runner builds first:
    every interpolation resolves (``OmegaConf.to_container(resolve=True)``); ``verl.utils.config.validate_config``
    (batch sizes against the GPUs, micro-batch settings of actor, reference and rollout, the ``FSDPActorConfig``
    and, for GAE, ``FSDPCriticConfig`` dataclasses and their ``validate``); ``RolloutConfig`` (with the agent-loop
    and multi-turn settings and ``custom``) and ``AlgoConfig`` via ``omega_conf_to_dataclass``; and the agent-loop
    registry names our loop. ``HFModelConfig`` loads the model's config and tokenizer, so it runs only when
    ``actor_rollout_ref.model.path`` is a model directory here, and ``validate_config`` gets the critic's model
    section as plain data. Not run at all: verl's datasets, which need the tokenizer and the parquet files (a
    local launch checks that the files exist)."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    checks: list[tuple[str, Callable[[], object]]] = [
        ("OmegaConf.to_container(resolve=True)", lambda: OmegaConf.to_container(config, resolve=True)),
        ("verl.utils.config.validate_config", lambda: _validate_config(_without_model_loading(config))),
        ("RolloutConfig", lambda: _to_dataclass(config.actor_rollout_ref.rollout)),
        ("AlgoConfig", lambda: _to_dataclass(config.algorithm)),
        *_local_model_checks(config),
    ]
    with contextlib.redirect_stdout(sys.stderr):  # verl prints its verdicts; stdout carries the printed command
        for name, check in checks:
            try:
                check()
            except (AssertionError, ValueError, TypeError, KeyError, HydraException, OmegaConfBaseException) as error:
                raise VerlConfigError(f"verl's {name} rejects the config: {_one_line(error)}") from error
    check_agent_loop_registry(config)
    return [name for name, _ in checks] + ["agent-loop registry"]


def _validate_config(config: DictConfig) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


def _to_dataclass(node: Any) -> Any:
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(node)


def _without_model_loading(config: DictConfig) -> DictConfig:
    """A copy in which the critic's model section is plain data: ``validate_config`` builds the critic's dataclass,
    whose ``HFModelConfig`` would load the model from its path."""
    from omegaconf import open_dict

    view = copy.deepcopy(config)
    with open_dict(view):
        view.critic.model.pop("_target_", None)
    return view


def _local_model_checks(config: DictConfig) -> list[tuple[str, Callable[[], object]]]:
    """``HFModelConfig`` of the actor's model (the critic's is the same path) when it is a directory here."""
    path = Path(str(config.actor_rollout_ref.model.path)).expanduser()
    if not (path / "config.json").is_file():
        return []
    return [("HFModelConfig", lambda: _to_dataclass(config.actor_rollout_ref.model))]


def check_agent_loop_registry(config: DictConfig) -> None:
    """The agent-loop registry, when it is readable here, registers ``rollout.agent.default_agent_loop`` (a path
    only the cluster's nodes have is left to them)."""
    import yaml

    agent = config.actor_rollout_ref.rollout.agent
    path = Path(str(agent.agent_loop_config_path))
    if not path.is_file():
        return
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    names = [entry.get("name") for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []
    if agent.default_agent_loop not in names:
        raise VerlConfigError(f"agent-loop registry {path} has no entry named {agent.default_agent_loop!r}: {names}")


def _one_line(error: BaseException) -> str:
    """The error and its causes (Hydra puts the useful part in the cause), as one line for the CLI."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        text = " ".join(str(current).split())
        if text and not any(text in part for part in parts):
            parts.append(text)
        current = current.__cause__
    return " — ".join(parts) or type(error).__name__


# --- the command -----------------------------------------------------------------------------------------------


def verl_command(
    config: TrainConfig,
    *,
    ray_address: str | None = None,
    resume: bool = False,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The command that runs ``config`` under verl: this interpreter's ``-m verl.trainer.main_ppo``, or with
    ``ray_address`` a ``ray job submit`` to that cluster's job server whose entry point is the cluster's ``python``.
    ``environ`` (default ``os.environ``) gives the values of :data:`FORWARDED_ENV` a submitted job carries."""
    overrides = verl_overrides(config, resume=resume)
    if ray_address is None:
        return [sys.executable, *VERL_MAIN, *overrides]
    submit = _ray_submit(config, ray_address, os.environ if environ is None else environ)
    return [*submit, "python", *VERL_MAIN, *overrides]


def _ray_submit(config: TrainConfig, address: str, environ: Mapping[str, str]) -> list[str]:
    command = ["ray", "job", "submit", "--address", address]
    if config.verl.ray_runtime_env is not None:
        # Ray takes one runtime env, from a file or as JSON: the file is then the whole of it
        command += ["--runtime-env", config.verl.ray_runtime_env]
    else:
        env_vars = {name: environ[name] for name in FORWARDED_ENV if name in environ}
        if env_vars:
            command += ["--runtime-env-json", json.dumps({"env_vars": env_vars}, sort_keys=True)]
    return [*command, "--"]


def run_verl(
    config: TrainConfig,
    *,
    ray_address: str | None = None,
    dry_run: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    """Check ``config`` against verl (translation, composition, validation), then print the command and return 0
    (``dry_run``) or run it, inheriting this process's terminal, and return its exit status."""
    command = verl_command(config, ray_address=ray_address, resume=resume)
    checks = validate_verl_config(compose_verl_config(verl_overrides(config, resume=resume)))
    log(f"verl {VERL_CONFIG_NAME} config composed and checked ({', '.join(checks)})")
    if dry_run:
        print(shlex.join(command))
        return 0
    if ray_address is None:
        _preflight_local(config)
    log(f"running: {shlex.join(command[:6])} …")
    try:
        return subprocess.run(_installed(command), check=False).returncode
    except FileNotFoundError as error:
        raise VerlConfigError(f"cannot start {command[0]!r} ({error}); is it installed in this environment?") from error


def _installed(command: list[str]) -> list[str]:
    """``ray`` from PATH, else the one installed beside this interpreter (a virtualenv that is not activated)."""
    if os.sep in command[0] or shutil.which(command[0]):
        return command
    beside = Path(sys.executable).with_name(command[0])
    return [str(beside), *command[1:]] if beside.is_file() else command


def _preflight_local(config: TrainConfig) -> None:
    """What a local run reads first and would otherwise fail on minutes later, inside Ray."""
    missing = [path for path in (*config.data.train_files, *config.data.val_files) if not Path(path).is_file()]
    if missing:
        raise VerlConfigError(f"data files not found: {', '.join(missing)} (expandsearch prepare qa / prepare mix)")
    registry = agent_loop_config_path(config)
    if not Path(registry).is_file():
        raise VerlConfigError(f"verl.agent_loop_config {registry} not found")
    if config.verl.use_v1 and importlib.util.find_spec("transfer_queue") is None:
        raise VerlConfigError("verl.use_v1 needs the transfer_queue package (TransferQueue); use verl.use_v1=false")
