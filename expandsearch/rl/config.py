"""The configuration of ``expandsearch train``: one frozen dataclass per section, a doc line per field.

``train_configs/tiny_cpu.yaml`` is the default; ``expandsearch train [--config FILE] [section.key=value …]``
loads it with :func:`expandsearch.config.load_config`, so unknown keys and bad values fail before anything runs.
The defaults below are the embedded default (the tiny world on two CPU cores); the YAML file restates the ones
a user is likely to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent_env.episode import EpisodeConfig
from expandsearch.rl.algorithms import LOSS_AGG_MODES, check_kl_estimator


@dataclass(frozen=True)
class WorldSection:
    """The synthetic world the agent is trained and evaluated on."""

    size: Literal["tiny", "small", "medium"] = "tiny"
    """Preset of ``data_prep.synthetic.WORLD_SIZES`` (tiny: 588 passages, 756 training questions)."""
    seed: int = 0
    """Seed of the world's names, facts, wordings and splits."""
    path: str | None = None
    """An existing world directory (``expandsearch world``) to use instead of generating one."""


@dataclass(frozen=True)
class WarmStartSection:
    """The supervised warm start: behaviour cloning of the scripted expert before RL."""

    init: str | None = None
    """An existing policy directory to start RL from; skips the warm start."""
    pretrain_steps: int = 600
    """Language-model steps on the world's search results first (the copying skills cloning needs; 0: none)."""
    pretrain_batch_size: int = 16
    """Search-result sequences per pretraining step."""
    steps: int = 2000
    """Behaviour-cloning optimizer steps (valid multi-variant searches after ~200; reading the answer out of the
    passages, which RL needs to start from, comes between 1,000 and 2,000)."""
    batch_size: int = 8
    """Expert trajectories per behaviour-cloning step."""
    lr: float = 5e-3
    """Peak behaviour-cloning learning rate."""
    demonstrations: int = 2000
    """Training questions the expert plays (capped by the train split)."""
    name_shuffle: float = 1.0
    """Probability of consistently renaming a demonstration's entities (teaches copying over memorising)."""
    count_facts: bool = True
    """Demonstrations that say in every ``<think>`` how many facts are left ("Facts left: 1."): the policy then
    carries the search depth forward as a count instead of judging it afresh each turn, and RL can change the
    depth of one question type without moving the others (docs/experiment_log.md, 2026-12-02)."""
    variant_mix: tuple[int, ...] = (1, 2, 3)
    """Variants per search of the demonstrations, one of these per question (empty: ``max_variants`` always). A
    mix of one-, two- and three-variant searchers leaves RL a choice to learn; it must stay within max_variants."""
    hidden_size: int = 64
    """Width of the tiny Qwen2 policy."""
    intermediate_size: int = 256
    """MLP width of the tiny Qwen2 policy."""
    layers: int = 2
    """Transformer blocks of the tiny Qwen2 policy."""
    heads: int = 4
    """Attention heads (the key/value heads are half of them)."""
    vocab_size: int = 4096
    """Target vocabulary of the tokenizer trained on the world's texts."""
    eval_questions: int = 0
    """Held-out questions the warm start evaluates itself on (0: leave it to the main job's evaluation)."""


@dataclass(frozen=True)
class RolloutSection:
    """How episodes are sampled for each RL step."""

    questions_per_step: int = 16
    """Training questions per step."""
    group_size: int = 4
    """Episodes sampled per question (GRPO's group; PPO uses them as more samples)."""
    squeezer: str = "extractive"
    """Squeezer spec (``agent_env.squeezers.make_squeezer``) of training and evaluation."""
    max_batch_size: int = 64
    """Most sequences the engine decodes in one batch."""
    max_concurrency: int = 256
    """Most episodes in flight at once."""
    episode: EpisodeConfig = field(default_factory=lambda: EpisodeConfig(max_turn_tokens=120, temperature=0.7))
    """Episode protocol and budgets; sampling at temperature 0.7 while training (the tiny policy's samples at 1
    stray far from its greedy behaviour, which evaluation uses), greedy in evaluation."""


@dataclass(frozen=True)
class AlgorithmSection:
    """The RL objective; the math is ``verl.trainer.ppo.core_algos``'s (see :mod:`expandsearch.rl.algorithms`)."""

    estimator: Literal["grpo", "gae"] = "grpo"
    """Advantage estimator: ``grpo`` (group-normalised outcome) or ``gae`` (PPO with a critic)."""
    norm_adv_by_std: bool = True
    """GRPO divides by the group's reward std (False: Dr. GRPO, mean-centred only)."""
    gamma: float = 1.0
    """GAE discount per policy token."""
    lam: float = 1.0
    """GAE lambda."""
    use_kl_loss: bool = True
    """Add a KL(policy || reference) term to the loss (GRPO's form)."""
    kl_loss_coef: float = 0.001
    """Weight of the KL loss term."""
    kl_loss_type: str = "low_var_kl"
    """KL estimator of the loss term: kl/k1, abs, mse/k2, low_var_kl/k3 (``+`` suffix: straight-through k2 grad)."""
    use_kl_in_reward: bool = False
    """Subtract ``kl_reward_coef * KL`` from the token rewards instead (PPO-RLHF's form)."""
    kl_reward_coef: float = 0.001
    """Weight of the KL penalty in the reward."""
    kl_reward_type: str = "kl"
    """KL estimator of the reward penalty."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""
    clip_ratio_low: float = 0.2
    """PPO clip: the ratio is kept above ``1 - clip_ratio_low``."""
    clip_ratio_high: float = 0.2
    """PPO clip: the ratio is kept below ``1 + clip_ratio_high`` (DAPO's clip-higher when larger)."""
    clip_ratio_c: float = 3.0
    """Dual-clip bound for negative advantages."""
    loss_agg_mode: str = "token-mean"
    """How token losses become one number: token-mean, token-sum, seq-mean-token-sum, seq-mean-token-mean, …"""
    ppo_epochs: int = 1
    """Passes over each step's episodes."""
    mini_batch_size: int = 64
    """Episodes per optimizer step (a step's episodes give ``questions_per_step * group_size / this`` updates)."""
    micro_batch_size: int = 8
    """Episodes per forward/backward; gradients accumulate over a mini-batch."""
    value_clip: float = 0.5
    """PPO value clip range around the old values."""
    critic_warmup: int = 0
    """Steps at the start during which only the critic is trained (PPO)."""

    def __post_init__(self) -> None:
        check_kl_estimator(self.kl_loss_type)
        check_kl_estimator(self.kl_reward_type)
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"unknown loss_agg_mode {self.loss_agg_mode!r}; known: {', '.join(LOSS_AGG_MODES)}")
        for name in ("ppo_epochs", "mini_batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(f"mini_batch_size {self.mini_batch_size} is not a multiple of {self.micro_batch_size}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError("gamma and lam must be in [0, 1]")


@dataclass(frozen=True)
class OptimSection:
    """Optimisers of the policy (and the critic)."""

    lr: float = 3e-4
    """Peak learning rate of the policy."""
    critic_lr: float = 1e-3
    """Peak learning rate of the critic."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW moment decay rates."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm."""
    warmup_steps: int = 3
    """Optimizer updates of linear warm-up from 0 to ``lr``."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After the warm-up: constant, or cosine decay to ``lr * min_lr_ratio``."""
    min_lr_ratio: float = 0.1
    """Where the cosine schedule ends."""

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.critic_lr > 0 and self.max_grad_norm > 0 and self.warmup_steps >= 0):
            raise ValueError("need lr > 0, critic_lr > 0, max_grad_norm > 0 and warmup_steps >= 0")


@dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation (greedy decoding on the test split)."""

    questions: int = 0
    """Test questions evaluated at the end (0: all of them)."""
    every: int = 10
    """Also evaluate every this many steps during training, on ``during_training_questions`` (0: never)."""
    during_training_questions: int = 64
    """Test questions of the evaluations during training."""


@dataclass(frozen=True)
class LoggingSection:
    """Where metrics go."""

    tensorboard: bool = True
    """Write TensorBoard event files under ``RUN_DIR/tensorboard``."""
    wandb: bool = False
    """Log to Weights & Biases too (when installed; ``WANDB_MODE`` is respected)."""
    wandb_project: str = "expandsearch"
    """W&B project name."""
    progress: bool = True
    """Show progress bars."""
    plots: bool = True
    """Write PNG training curves into the run directory at the end."""


@dataclass(frozen=True)
class TrainConfig:
    """``expandsearch train``: world → BM25 index → warm start → RL → held-out evaluation."""

    run_dir: str = "runs/demo"
    """Everything of the run goes here: world, index, policies, checkpoints, metrics, plots, summary.json."""
    seed: int = 0
    """Seeds the data order, the rollout sampling and the warm start."""
    steps: int = 40
    """RL steps (each: rollout of ``questions_per_step * group_size`` episodes, then the updates)."""
    checkpoint_every: int = 10
    """Steps between checkpoints (one is also written at the end)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept."""
    torch_threads: int = 0
    """Threads of torch's CPU kernels (0: leave torch's default)."""
    device: str = "cpu"
    """Device of the policy: cpu, cuda, cuda:1, … (``auto``: cuda when available)."""
    world: WorldSection = field(default_factory=WorldSection)
    """The synthetic world."""
    warm_start: WarmStartSection = field(default_factory=WarmStartSection)
    """Behaviour cloning before RL."""
    rollout: RolloutSection = field(default_factory=RolloutSection)
    """Sampling episodes."""
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    """The RL objective."""
    optim: OptimSection = field(default_factory=OptimSection)
    """Optimisers."""
    eval: EvalSection = field(default_factory=EvalSection)
    """Held-out evaluation."""
    logging: LoggingSection = field(default_factory=LoggingSection)
    """Metrics, TensorBoard, W&B, plots."""

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        most = self.rollout.episode.max_variants
        if any(not 1 <= variants <= most for variants in self.warm_start.variant_mix):
            raise ValueError(
                f"warm_start.variant_mix {list(self.warm_start.variant_mix)} must lie within 1..{most} "
                "(rollout.episode.max_variants); use [] for always the maximum"
            )
        episodes = self.rollout.questions_per_step * self.rollout.group_size
        if episodes % self.algorithm.mini_batch_size:
            raise ValueError(
                f"a step's {episodes} episodes (questions_per_step x group_size) are not a multiple of "
                f"algorithm.mini_batch_size {self.algorithm.mini_batch_size}"
            )
