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
    """The synthetic world: a recipe that writes a world, its BM25 index and (with ``warm_start.kind:
    world_expert``) a warm-started tiny policy under the run directory, which the trainer then takes like any
    other data, index and policy."""

    size: Literal["tiny", "demo", "small", "medium"] = "demo"
    """Preset of ``data_prep.synthetic.WORLD_SIZES`` (demo: 1,692 passages, 809 training and 2,268 held-out test
    questions; tiny: 588 passages, 756 and 216)."""
    seed: int = 0
    """Seed of the world's names, facts, wordings and splits."""
    path: str | None = None
    """An existing world directory (``expandsearch world``) to use instead of generating one."""


@dataclass(frozen=True)
class DataSection:
    """The questions: verl-schema parquet files, or the synthetic world (exactly one of the two)."""

    train_files: tuple[str, ...] = ()
    """Training parquet files (``expandsearch prepare qa`` / ``prepare mix``; verl's RL dataset schema)."""
    val_files: tuple[str, ...] = ()
    """Held-out parquet files: the evaluations during training and at the end."""
    world: WorldSection | None = field(default_factory=WorldSection)
    """The synthetic world instead of files (``null`` when train_files or beir are given)."""
    beir: str | None = None
    """A BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/train.tsv`` and ``test.tsv``) for ``task:
    coaug``: training queries from the train qrels, evaluation on the test qrels."""
    max_train_questions: int = 0
    """Training questions kept after shuffling (0: all)."""
    max_val_questions: int = 0
    """Held-out questions kept, in file order (0: all)."""
    shuffle_seed: int | None = None
    """Seed of the order in which files' training questions are kept (None: the run's seed)."""

    def __post_init__(self) -> None:
        if self.world is not None and (self.train_files or self.val_files):
            raise ValueError("data.world and data.train_files/val_files at once: set data.world=null to train on files")
        if self.beir is not None and (self.world is not None or self.train_files or self.val_files):
            raise ValueError("data.beir and data.world or data files at once: give one source (data.world=null)")
        if self.world is None and self.beir is None and not (self.train_files and self.val_files):
            raise ValueError(
                "no data: give data.train_files and data.val_files (parquet), a data.world section, or data.beir"
            )
        if self.max_train_questions < 0 or self.max_val_questions < 0:
            raise ValueError("data.max_train_questions and max_val_questions must be >= 0")


@dataclass(frozen=True)
class TinyPolicySection:
    """The from-scratch Qwen2 of ``policy.model: tiny`` (built by the world-expert warm start)."""

    hidden_size: int = 64
    """Width."""
    intermediate_size: int = 256
    """MLP width."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 4
    """Attention heads (the key/value heads are half of them)."""
    vocab_size: int = 4096
    """Target vocabulary of the tokenizer trained on the world's texts."""


@dataclass(frozen=True)
class PolicySection:
    """The policy LLM that is trained."""

    model: str = "tiny"
    """A model spec as ``agent_env.models.load_causal_lm`` takes it (a transformers directory, a ``.gguf`` file,
    ``smollm2``), or ``tiny``: a from-scratch Qwen2 with the world's tokenizer (needs warm_start.kind world_expert)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and compute dtype of the policy (and its reference and critic); bfloat16 on GPUs."""
    device: str = "cpu"
    """cpu, cuda, cuda:1, … (``auto``: cuda when available)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more time)."""
    trainable: Literal["all", "all_but_embeddings"] = "all"
    """Which parameters train: ``all_but_embeddings`` freezes the input (and tied output) embeddings (a fifth of
    SmolLM2-135M, whose 49k-token vocabulary dominates its optimizer state), so a 135M model fits a CPU budget."""
    tiny: TinyPolicySection = field(default_factory=TinyPolicySection)
    """Size of the ``tiny`` policy."""


@dataclass(frozen=True)
class RetrieverSection:
    """Where episodes search: an index directory searched in-process, or running retriever servers."""

    index: str | None = None
    """Index directory (``expandsearch index``); with data.world and no urls, ``RUN_DIR/index`` is built."""
    urls: tuple[str, ...] = ()
    """URLs of running ``expandsearch serve-retriever`` or Search-R1 servers; requests rotate over them and fail
    over to the next when one is down."""
    token_env: str | None = None
    """Environment variable holding the servers' bearer token."""
    timeout_s: float = 30.0
    """Per-request timeout; a failing request is retried (with back-off) before the episode is told."""
    retries: int = 3
    """Retries of a failing request per server."""

    def __post_init__(self) -> None:
        if self.index is not None and self.urls:
            raise ValueError("retriever.index and retriever.urls at once: give one of them")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ValueError("retriever.timeout_s must be > 0 and retriever.retries >= 0")


@dataclass(frozen=True)
class SFTSection:
    """Masked supervised fine-tuning on demonstrations (``expandsearch prepare demos``): loss on policy tokens."""

    demonstrations: tuple[str, ...] = ()
    """Demonstration jsonl files, tokenized with this policy's tokenizer."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 4
    """Demonstrations per step."""
    lr: float = 2e-5
    """Peak learning rate (a pretrained model takes small steps)."""
    warmup_steps: int = 10
    """Steps of linear warm-up; cosine decay to a tenth afterwards."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("warm_start.sft needs steps >= 1, batch_size >= 1, lr > 0, warmup_steps >= 0")


@dataclass(frozen=True)
class WorldExpertSection:
    """The synthetic world's warm start: pretraining on its search results, then cloning its scripted expert."""

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
    eval_questions: int = 0
    """Held-out questions the warm start evaluates itself on (0: leave it to the main job's evaluation)."""


@dataclass(frozen=True)
class WarmStartSection:
    """What happens to the policy before RL."""

    kind: Literal["none", "sft", "world_expert"] = "world_expert"
    """``none`` (RL starts from policy.model as it is), ``sft`` (masked fine-tuning on demonstrations) or
    ``world_expert`` (the synthetic world's pretraining + cloning; needs data.world and policy.model tiny)."""
    sft: SFTSection = field(default_factory=SFTSection)
    """Settings of ``kind: sft``."""
    world_expert: WorldExpertSection = field(default_factory=WorldExpertSection)
    """Settings of ``kind: world_expert``."""


@dataclass(frozen=True)
class RolloutSection:
    """How episodes are sampled for each RL step."""

    questions_per_step: int = 16
    """Training questions per step."""
    group_size: int = 4
    """Episodes sampled per question (GRPO's group; PPO uses them as more samples)."""
    max_batch_size: int = 64
    """Most sequences the engine decodes in one batch."""
    max_concurrency: int = 256
    """Most episodes in flight at once."""
    episode: EpisodeConfig = field(default_factory=lambda: EpisodeConfig(max_turn_tokens=120, temperature=0.7))
    """Episode protocol and budgets; sampling at temperature 0.7 while training (the tiny policy's samples at 1
    stray far from its greedy behaviour, which evaluation uses), greedy in evaluation."""


@dataclass(frozen=True)
class FilterGroupsSection:
    """DAPO's dynamic sampling (verl's ``algorithm.filter_groups``): a group whose episodes all earned the same
    reward has zero GRPO advantage and teaches nothing, so the step samples further batches of questions and
    trains on the groups whose rewards differ."""

    enable: bool = False
    """Fill the step's ``questions_per_step`` groups with groups of mixed rewards first."""
    max_num_gen_batches: int = 3
    """Most batches of ``questions_per_step`` questions sampled per step; when they hold too few mixed groups,
    the rest of the step's groups are the uniform ones (zero advantage), so a step's shape never changes."""

    def __post_init__(self) -> None:
        if self.max_num_gen_batches < 1:
            raise ValueError(f"filter_groups.max_num_gen_batches must be >= 1, got {self.max_num_gen_batches}")


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
    filter_groups: FilterGroupsSection = field(default_factory=FilterGroupsSection)
    """Dynamic sampling: train on groups whose rewards differ (GRPO)."""

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
        if self.filter_groups.enable and self.estimator != "grpo":
            raise ValueError(
                "algorithm.filter_groups filters GRPO groups: it needs algorithm.estimator grpo "
                "(with another estimator, set algorithm.filter_groups.enable=false)"
            )


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
class CoAugSection:
    """``task: coaug``: query and document augmentation trained jointly by the batch-level NDCG@10 reward
    (``agent_env.coaug_reward``; docs/coaugmentation.md). Each training query brings one query prompt,
    ``positives`` documents from its train qrels and ``negatives`` unjudged ones; ``rollout.group_size``
    augmentations are sampled per prompt at ``rollout.episode.temperature``."""

    kind: Literal["sparse"] = "sparse"
    """The augmenter's prompts and the reward's retriever: sparse (BM25 with the whole corpus's IDF)."""
    train: Literal["both", "query", "document"] = "both"
    """Which side's policy samples and learns; the other side keeps its original text (each side alone)."""
    positives: int = 5
    """Documents sampled from a query's train qrels (with replacement when it has fewer)."""
    negatives: int = 10
    """Documents of the corpus a query is not judged relevant to (random, but for ``hard_negatives`` of them)."""
    hard_negatives: int = 0
    """Of the negatives, how many are drawn from the ``hard_pool`` unjudged documents that the reward's BM25 ranks
    highest for the original query (0: all random, the reference's batch). With random negatives a SciFact
    query's positives outrank them whatever the augmentations say, so most rewards tie."""
    hard_pool: int = 30
    """The top-ranked unjudged documents ``hard_negatives`` are drawn from."""
    max_new_tokens: int = 96
    """Tokens per augmentation."""
    think: bool = True
    """The prompt asks for ``<think>`` first; false prefills ``<answer>`` so every token is the augmentation (a
    small model's budget goes to the answer)."""
    max_prompt_tokens: int = 256
    """A document is cut (in tokens) so its prompt fits."""
    draws: int = 0
    """Column draws of the reward estimate (0: the reference's count)."""
    pos_weight: float = 10.0
    """A document version's reward weighs its own query's rows ``1 + pos_weight * relevance``."""
    k1: float = 0.9
    """BM25 k1 of the reward and the evaluation (the SciFact anchor's)."""
    b: float = 0.4
    """BM25 b of the reward and the evaluation."""

    def __post_init__(self) -> None:
        if self.positives < 1 or self.negatives < 0 or self.max_new_tokens < 1 or self.draws < 0:
            raise ValueError("coaug needs positives >= 1, negatives >= 0, max_new_tokens >= 1 and draws >= 0")
        if not 0 <= self.hard_negatives <= min(self.negatives, self.hard_pool):
            raise ValueError("coaug.hard_negatives must lie between 0 and both coaug.negatives and coaug.hard_pool")

    def prompts_per_query(self) -> int:
        """Prompts each training query brings to a step."""
        documents = self.positives + self.negatives
        return {"both": 1 + documents, "query": 1, "document": documents}[self.train]


@dataclass(frozen=True)
class VerlSection:
    """``expandsearch train --backend verl``: what verl needs beyond the sections above (the launcher,
    :mod:`expandsearch.verl_backend.launch`, translates everything else); the embedded trainer ignores it."""

    nnodes: int = 1
    """Machines of the Ray cluster (``trainer.nnodes``)."""
    n_gpus_per_node: int = 1
    """GPUs per machine (``trainer.n_gpus_per_node``)."""
    rollout_name: Literal["vllm", "sglang"] = "vllm"
    """Inference engine of the rollouts (``actor_rollout_ref.rollout.name``)."""
    tensor_model_parallel_size: int = 1
    """GPUs each rollout engine shards the policy over (a 3B policy fits one)."""
    gpu_memory_utilization: float = 0.5
    """Share of a GPU's memory the rollout engine takes (the rest holds the FSDP actor, reference and critic)."""
    max_prompt_length: int = 1024
    """Tokens of the first prompt (``data.max_prompt_length`` and ``rollout.prompt_length``); longer prompts fail
    verl's dataset, so it must hold the template and the longest question as the chat template renders them."""
    save_freq: int | None = None
    """Steps between verl checkpoints (None: ``checkpoint_every``; -1: never)."""
    test_freq: int | None = None
    """Steps between validations on ``data.val_files`` (None: ``eval.every``, where 0 means never; -1: never)."""
    project_name: str | None = None
    """``trainer.project_name`` (None: ``logging.wandb_project``)."""
    experiment_name: str | None = None
    """``trainer.experiment_name`` (None: the name of ``run_dir``)."""
    use_v1: bool = False
    """``trainer.use_v1``: verl's v1 trainer keeps its batches in TransferQueue (the ``transfer_queue`` package,
    installed neither by verl nor by us), so the default is the v0 trainer, which drives our agent loop as well."""
    ray_runtime_env: str | None = None
    """A Ray runtime-env YAML for ``--ray-address`` (``ray job submit --runtime-env``): how the nodes get this package
    (``pip``, ``working_dir``) and the secrets (retriever token, ``WANDB_API_KEY``), which never go on the command
    line (None: only the non-secret variables of ``launch.FORWARDED_ENV`` that are set here)."""
    agent_loop_config: str | None = None
    """The agent-loop registry (``rollout.agent.agent_loop_config_path``; None: the shipped
    ``train_configs/verl/agent_loops.yaml`` where this package is installed, which every node must have too)."""
    agent_num_workers: int = 8
    """Agent-loop worker processes (``rollout.agent.num_workers``) the episodes of a step are spread over."""
    extra_overrides: tuple[str, ...] = ()
    """Raw Hydra overrides of verl's ``ppo_trainer`` config, applied last (``trainer.val_before_train=false``)."""

    def __post_init__(self) -> None:
        for name in ("nnodes", "n_gpus_per_node", "tensor_model_parallel_size", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.agent_num_workers < 1:
            raise ValueError(f"agent_num_workers must be >= 1, got {self.agent_num_workers}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("save_freq", "test_freq"):
            value = getattr(self, name)
            if value is not None and value < -1:
                raise ValueError(f"{name} must be >= -1 (-1: never) or null, got {value}")
        for override in self.extra_overrides:
            # Hydra's own grammar checks them when the config is composed; this catches a bare word early
            if "=" not in override and not override.startswith("~"):
                raise ValueError(f"extra override {override!r} is not a Hydra override (key=value, +key=value, ~key)")


TASKS = ("qa_em", "coaug")
"""Names of ``expandsearch.rl.tasks.TASKS`` (kept here so that validating a config imports no task code)."""


@dataclass(frozen=True)
class TrainConfig:
    """``expandsearch train``: [world recipe →] warm start → RL → held-out evaluation of a search agent."""

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
    task: str = "qa_em"
    """What episodes are played and how a batch is scored (``expandsearch.rl.tasks``): ``qa_em`` answers
    questions with the exact-match reward; ``coaug`` augments queries and documents (``data.beir``, ``coaug``)."""
    data: DataSection = field(default_factory=DataSection)
    """The questions."""
    policy: PolicySection = field(default_factory=PolicySection)
    """The policy LLM."""
    retriever: RetrieverSection = field(default_factory=RetrieverSection)
    """The retriever."""
    squeezer: str = "extractive"
    """Squeezer spec (``agent_env.squeezers.make_squeezer``) of training and evaluation: none, extractive[:N],
    local:MODEL, openai:URL#model."""
    warm_start: WarmStartSection = field(default_factory=WarmStartSection)
    """Before RL."""
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
    coaug: CoAugSection = field(default_factory=CoAugSection)
    """Settings of ``task: coaug``."""
    verl: VerlSection = field(default_factory=VerlSection)
    """Settings of ``expandsearch train --backend verl`` (cluster shape, rollout engine, verl overrides)."""

    @property
    def episodes_per_step(self) -> int:
        """Sampled responses per RL step: questions (or queries) x prompts each x ``group_size``."""
        prompts = self.coaug.prompts_per_query() if self.task == "coaug" else 1
        return self.rollout.questions_per_step * prompts * self.rollout.group_size

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        self._check_sources()
        most = self.rollout.episode.max_variants
        if any(not 1 <= variants <= most for variants in self.warm_start.world_expert.variant_mix):
            raise ValueError(
                f"warm_start.world_expert.variant_mix {list(self.warm_start.world_expert.variant_mix)} must lie "
                f"within 1..{most} (rollout.episode.max_variants); use [] for always the maximum"
            )
        episodes = self.episodes_per_step
        if episodes % self.algorithm.mini_batch_size:
            per = " x coaug prompts per query" if self.task == "coaug" else ""
            raise ValueError(
                f"a step's {episodes} episodes (questions_per_step{per} x group_size) are not a multiple of "
                f"algorithm.mini_batch_size {self.algorithm.mini_batch_size}"
            )

    def _check_sources(self) -> None:
        """The combinations of data, policy, retriever and warm start that make a run (no I/O: see preflight)."""
        if (self.task == "coaug") != (self.data.beir is not None):
            raise ValueError("task coaug trains on data.beir, and data.beir is for task coaug: set both or neither")
        if self.task == "coaug":
            self._check_coaug()
            return
        kind = self.warm_start.kind
        if kind == "world_expert" and self.data.world is None:
            raise ValueError("warm_start.kind world_expert needs data.world (use sft or none with data files)")
        if kind == "world_expert" and self.policy.model != "tiny":
            raise ValueError("warm_start.kind world_expert builds policy.model tiny; set policy.model=tiny")
        if self.policy.model == "tiny" and kind != "world_expert":
            raise ValueError("policy.model tiny is built by warm_start.kind world_expert; name a model to start from")
        if kind == "sft" and not self.warm_start.sft.demonstrations:
            raise ValueError("warm_start.kind sft needs warm_start.sft.demonstrations (expandsearch prepare demos)")
        if self.data.world is None and self.retriever.index is None and not self.retriever.urls:
            raise ValueError("no retriever: give retriever.index (a directory) or retriever.urls (running servers)")

    def _check_coaug(self) -> None:
        if self.warm_start.kind != "none" or self.policy.model == "tiny":
            raise ValueError("task coaug starts from a named policy.model with warm_start.kind none")
        if self.algorithm.estimator != "grpo":
            raise ValueError("task coaug computes its own group advantages: algorithm.estimator must be grpo")
        if self.algorithm.filter_groups.enable:
            raise ValueError(
                "task coaug scores a whole batch at once: algorithm.filter_groups cannot pick its groups "
                "(set algorithm.filter_groups.enable=false)"
            )
