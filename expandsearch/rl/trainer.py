"""The embedded RL trainer: GRPO or PPO on one machine, with the agent environment's own episodes.

One step, top to bottom (:meth:`Trainer.train_step`), each stage timed under ``timing/<stage>``:

1. ``rollout`` — ``questions_per_step`` training questions, ``group_size`` episodes each, sampled through the real
   environment (:class:`agent_env.rollout.RolloutRunner`: micro-batched decoding, batched retrieval, squeezer);
2. ``reward`` — the task scores the whole batch (:mod:`expandsearch.rl.tasks`; exact match per episode for QA),
   each outcome reward onto its episode's last policy token (optionally minus a KL penalty); the batch moves to
   the policy's device;
3. ``old_log_prob`` / ``ref_log_prob`` — log-probs of the sampled tokens under the policy before the update and
   under the frozen reference (the warm-started policy);
4. ``values`` — the critic's values (PPO only);
5. ``advantages`` — GRPO's group-normalised outcome, or GAE over policy tokens;
6. ``update_critic`` / ``update_actor`` — ``ppo_epochs`` passes of mini-batches, micro-batches accumulating
   gradients; clipped policy loss, KL loss, entropy bonus, gradient clipping.

Environment tokens (passages, summaries, feedback) are context only: ``response_mask`` keeps them out of every
advantage, KL and loss. A checkpoint after a step holds everything the next step depends on, so a killed run
resumed from it continues exactly as if it had not stopped (on CPU, with a fixed seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from agent_env.engine import derive_seed
from agent_env.rollout import EpisodeInput, RolloutRunner, summarize_rollouts
from expandsearch.rl import algorithms
from expandsearch.rl.batch import RolloutBatch, policy_log_probs
from expandsearch.rl.critic import ValueModel
from expandsearch.rl.schedule import lr_lambda

if TYPE_CHECKING:
    from agent_env.episode import AgentEnv, Trajectory
    from expandsearch.rl.config import TrainConfig
    from expandsearch.rl.tasks import Task

    ScoredGroup = tuple[list[Trajectory], list[float]]
    """A question's ``group_size`` episodes and the task's scores of them."""

Item = TypeVar("Item")


@contextlib.contextmanager
def timed(metrics: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics[f"timing/{stage}"] = time.perf_counter() - started


@dataclass
class DataOrder:
    """Training questions in a fresh seeded order every epoch; ``(epoch, position)`` is the data position."""

    size: int
    seed: int
    epoch: int = 0
    position: int = 0

    def next_indices(self, count: int) -> list[int]:
        indices: list[int] = []
        while len(indices) < count:
            order = self._order(self.epoch)
            take = min(count - len(indices), self.size - self.position)
            indices += order[self.position : self.position + take]
            self.position += take
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(derive_seed(self.seed, epoch)).shuffle(order)
        return order

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class Trainer:
    """GRPO/PPO on a causal LM policy, playing ``task``'s episodes in ``env`` (whose engine decodes with
    ``policy``)."""

    def __init__(
        self, config: TrainConfig, policy: Any, tokenizer: Any, env: AgentEnv | None, task: Task, engine: Any = None
    ) -> None:
        self.config = config
        self.policy = policy
        self.tokenizer = tokenizer
        self._env = env
        self.engine: Any = env.engine if env is not None else engine
        """The engine sampling with ``policy``: the environment's, or (a task that plays no episodes) ``engine``."""
        if self.engine is None:
            raise ValueError("a trainer needs an environment or an engine")
        self.task = task
        self.questions: list[EpisodeInput] = list(task.train.inputs)
        self.eval_inputs: list[EpisodeInput] = task.held_out.inputs[: config.eval.during_training_questions]
        """Held-out questions of the evaluations during training (``eval.every``)."""
        self.device = next(policy.parameters()).device
        self.algorithm = config.algorithm
        self.step = 0
        self.data = DataOrder(len(self.questions), config.seed)
        self.loop = asyncio.new_event_loop()
        needs_reference = self.algorithm.use_kl_loss or self.algorithm.use_kl_in_reward
        self.reference = _frozen_copy(policy) if needs_reference else None
        # only what trains: policy.trainable all_but_embeddings leaves the embeddings out (and out of AdamW's state)
        trainable = [parameter for parameter in policy.parameters() if parameter.requires_grad]
        self.optimizer, self.scheduler = self._optimizer(trainable, config.optim.lr)
        self.critic: ValueModel | None = None
        if self.algorithm.estimator == "gae":
            self.critic = ValueModel.from_policy(policy).to(self.device)
            self.critic_optimizer, self.critic_scheduler = self._optimizer(
                self.critic.parameters(), config.optim.critic_lr
            )
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else 0
        # The policy the samples come from is the tempered one, so the ratios and the KL are taken under it too
        # (as verl's actor does); evaluation stays greedy.
        self.temperature = config.rollout.episode.temperature or 1.0
        self.sampling_metrics: dict[str, float] = {}
        """What the last rollout sampled to find its groups (:meth:`rollout`)."""

    def _optimizer(self, parameters: Any, lr: float) -> tuple[Any, Any]:
        optim = self.config.optim
        optimizer = torch.optim.AdamW(parameters, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
        updates = self.config.steps * self.updates_per_step
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, updates))
        return optimizer, scheduler

    @property
    def updates_per_step(self) -> int:
        return self.algorithm.ppo_epochs * self.config.episodes_per_step // self.algorithm.mini_batch_size

    @property
    def on_policy(self) -> bool:
        """One update per step, on samples of the current policy: the "old" log-probs are the current ones, so the
        update takes them (detached) from its own forward pass instead of a separate one, as TRL does. The KL in
        the reward needs them before the update, so it keeps the pass."""
        return self.updates_per_step == 1 and not self.algorithm.use_kl_in_reward

    # --- one step ------------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One RL step; returns its metrics (rollout, actor, critic and timing)."""
        self.step += 1
        metrics: dict[str, float] = {}
        started = time.perf_counter()
        with timed(metrics, "rollout"):
            trajectories, rewards = self.scored_rollout()
        with timed(metrics, "reward"):
            batch = self.reward(trajectories, rewards)
        if not self.on_policy:
            with timed(metrics, "old_log_prob"):
                batch.old_log_probs = self.log_probs(self.policy, batch)
        if self.reference is not None:
            with timed(metrics, "ref_log_prob"):
                batch.ref_log_probs = self.log_probs(self.reference, batch)
        if self.critic is not None:
            with timed(metrics, "values"):
                batch.values = self.values(batch)
        with timed(metrics, "advantages"):
            self.advantages(batch)
        if self.critic is not None:
            with timed(metrics, "update_critic"):
                metrics |= self.update_critic(batch)
        # a step whose advantages are all zero carries no signal: the task may say so, and the update is skipped
        skipped = bool(batch.extra.get("skipped"))
        if (self.step > self.algorithm.critic_warmup or self.critic is None) and not skipped:
            with timed(metrics, "update_actor"):
                metrics |= self.update_actor(batch)
            _clear_engine_cache(self.engine)
        metrics |= self.rollout_metrics(trajectories) | _batch_metrics(batch, self.temperature)
        metrics["timing/step"] = time.perf_counter() - started
        metrics["perf/tokens_per_s"] = float(batch.attention_mask.sum()) / metrics["timing/step"]
        return metrics

    def rollout_metrics(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """``rollout/…`` metrics of the step's episodes (and the retriever's failovers so far), and of what was
        sampled to find them (``rollout/sampled_*``: every batch the step sampled, kept or not)."""
        return summarize_rollouts(trajectories) | _search_metrics(self.env.search) | self.sampling_metrics

    def rollout(self) -> list[Trajectory]:
        """This step's episodes, input-major (a question's ``group_size`` samples are consecutive)."""
        return self.scored_rollout()[0]

    def scored_rollout(self) -> tuple[list[Trajectory], list[float] | None]:
        """This step's episodes and the task's scores of them (handed on to :meth:`reward`, which would score
        them again otherwise).

        With ``algorithm.filter_groups`` the step samples up to ``max_num_gen_batches`` batches of questions and
        keeps the groups whose rewards differ (the only ones with a GRPO advantage), topped up with uniform
        groups when too few were found, so every step has ``questions_per_step`` groups."""
        rollout, filtering = self.config.rollout, self.algorithm.filter_groups
        mixed: list[ScoredGroup] = []
        uniform: list[ScoredGroup] = []
        rewards: list[float] = []
        batches = filtering.max_num_gen_batches if filtering.enable else 1
        for attempt in range(batches):
            trajectories = self._sample(attempt)
            scores = self.task.score(trajectories)  # a whole batch at once: a task may score batch-level
            rewards += scores
            size = rollout.group_size
            for group in zip(_groups(trajectories, size), _groups(scores, size), strict=True):
                (mixed if len(set(group[1])) > 1 else uniform).append(group)
            if len(mixed) >= rollout.questions_per_step:
                break
        sampled_groups = len(mixed) + len(uniform)
        self.sampling_metrics = {
            "rollout/sampled_batches": float(attempt + 1),
            "rollout/sampled_reward_mean": sum(rewards) / len(rewards),
            "rollout/sampled_mixed_groups": len(mixed) / sampled_groups,
        }
        if not filtering.enable:
            return trajectories, scores
        kept = (mixed + uniform)[: rollout.questions_per_step]
        return [t for group, _ in kept for t in group], [score for _, scores in kept for score in scores]

    def _sample(self, attempt: int) -> list[Trajectory]:
        """``group_size`` episodes of each of the next ``questions_per_step`` training questions."""
        rollout = self.config.rollout
        picked = [self.questions[index] for index in self.data.next_indices(rollout.questions_per_step)]
        runner = RolloutRunner(self.env, max_concurrency=rollout.max_concurrency)
        self.policy.eval()
        # Seeded per step (and batch): the samples depend on the step, not on how the engine happened to batch them.
        seed = derive_seed(self.config.seed, self.step, *([attempt] if attempt else []))
        return self.loop.run_until_complete(runner.run(picked, samples_per_input=rollout.group_size, seed=seed))

    def reward(self, trajectories: Sequence[Trajectory], rewards: Sequence[float] | None = None) -> RolloutBatch:
        """The step's batch with its outcome rewards: ``rewards`` when the rollout scored it already, else the
        task's scores."""
        group_size = self.config.rollout.group_size
        groups = [f"{self.step}/{index // group_size}" for index in range(len(trajectories))]
        rewards = self.task.score(trajectories) if rewards is None else list(rewards)
        batch = RolloutBatch.from_trajectories(trajectories, self.pad_token_id, groups, rewards).to(self.device)
        batch.token_rewards = algorithms.outcome_token_rewards(batch.rewards, batch.response_mask)
        return batch

    @torch.no_grad()
    def log_probs(self, model: Any, batch: RolloutBatch) -> torch.Tensor:
        model.eval()
        parts = batch.split(self.algorithm.micro_batch_size)
        chunks = [policy_log_probs(model, part, temperature=self.temperature)[0] for part in parts]
        return _stack_rows(chunks, batch.response_mask.shape[-1])

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> torch.Tensor:
        assert self.critic is not None
        self.critic.eval()
        chunks = [self.critic.values(part) for part in batch.split(self.algorithm.micro_batch_size)]
        return _stack_rows(chunks, batch.response_mask.shape[-1])

    def advantages(self, batch: RolloutBatch) -> None:
        algorithm = self.algorithm
        assert batch.token_rewards is not None
        if algorithm.use_kl_in_reward:
            assert batch.old_log_probs is not None
            assert batch.ref_log_probs is not None
            batch.token_rewards, kl = algorithms.kl_penalised_rewards(
                batch.token_rewards,
                batch.old_log_probs,
                batch.ref_log_probs,
                batch.response_mask,
                coef=algorithm.kl_reward_coef,
                estimator=algorithm.kl_reward_type,
            )
            batch.extra["reward_kl"] = float(kl.sum() / batch.response_mask.sum().clamp(min=1))
        if algorithm.estimator == "grpo":
            batch.advantages = algorithms.grpo_advantages(
                batch.token_rewards.sum(-1), batch.response_mask, batch.group_ids, norm_by_std=algorithm.norm_adv_by_std
            )
        else:
            assert batch.values is not None
            batch.advantages, batch.returns = algorithms.gae_advantages(
                batch.token_rewards, batch.values, batch.response_mask, gamma=algorithm.gamma, lam=algorithm.lam
            )

    # --- updates -------------------------------------------------------------------------------------------------

    def mini_batches(self, batch: RolloutBatch) -> Iterator[RolloutBatch]:
        """``ppo_epochs`` passes over the batch in mini-batches, in a seeded order per step and epoch."""
        for epoch in range(self.algorithm.ppo_epochs):
            order = list(range(len(batch)))
            random.Random(derive_seed(self.config.seed, self.step, epoch)).shuffle(order)
            size = self.algorithm.mini_batch_size
            for start in range(0, len(order), size):
                yield batch.select(order[start : start + size])

    def update_actor(self, batch: RolloutBatch) -> dict[str, float]:
        return self._update(self.policy, self.optimizer, self.scheduler, batch, self._actor_loss, "actor")

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        assert self.critic is not None
        return self._update(
            self.critic, self.critic_optimizer, self.critic_scheduler, batch, self._critic_loss, "critic"
        )

    def _update(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        batch: RolloutBatch,
        micro_loss: Callable[[RolloutBatch, dict[str, int]], dict[str, float]],
        prefix: str,
    ) -> dict[str, float]:
        """One optimizer update per mini-batch; ``micro_loss`` backwards a micro-batch's share of its loss."""
        model.train()
        rows: list[dict[str, float]] = []
        for mini_batch in self.mini_batches(batch):
            optimizer.zero_grad(set_to_none=True)
            normalisers = algorithms.loss_normalisers(mini_batch.response_mask)
            parts = [micro_loss(micro, normalisers) for micro in mini_batch.split(self.algorithm.micro_batch_size)]
            row = {key: sum(part[key] for part in parts) for key in parts[0]}
            max_norm = self.config.optim.max_grad_norm
            row[f"{prefix}/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            row[f"{prefix}/lr"] = float(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            rows.append(row)
        model.eval()
        return _mean_rows(rows)

    def _actor_loss(self, micro: RolloutBatch, normalisers: dict[str, int]) -> dict[str, float]:
        """Backward one micro-batch's share of the mini-batch loss; returns its share of the metrics."""
        algorithm = self.algorithm
        assert micro.advantages is not None
        mask = micro.response_mask
        log_probs, entropy = policy_log_probs(self.policy, micro, with_entropy=True, temperature=self.temperature)
        assert entropy is not None
        share = float(mask.sum()) / max(normalisers["batch_num_tokens"], 1)
        metrics: dict[str, float] = {}
        old_log_probs = micro.old_log_probs
        if old_log_probs is None:  # on-policy: see Trainer.on_policy
            old_log_probs = log_probs.detach()
            metrics |= _logprob_gap(old_log_probs, micro, self.temperature, share)
        pg_loss, pg_metrics = algorithms.policy_loss(
            old_log_probs,
            log_probs,
            micro.advantages,
            mask,
            clip_low=algorithm.clip_ratio_low,
            clip_high=algorithm.clip_ratio_high,
            clip_c=algorithm.clip_ratio_c,
            agg_mode=algorithm.loss_agg_mode,
            normalisers=normalisers,
        )
        entropy_loss = algorithms.aggregate(entropy, mask, algorithm.loss_agg_mode, normalisers)
        loss = pg_loss - algorithm.entropy_coef * entropy_loss
        metrics |= {"actor/pg_loss": float(pg_loss.detach()), "actor/entropy": float(entropy_loss.detach())}
        metrics |= {key: value * share for key, value in pg_metrics.items()}
        if micro.ref_log_probs is not None:
            kl = algorithms.kl_estimate(log_probs, micro.ref_log_probs, algorithm.kl_loss_type)
            kl_loss = algorithms.aggregate(kl, mask, algorithm.loss_agg_mode, normalisers)
            if algorithm.use_kl_loss:
                loss = loss + algorithm.kl_loss_coef * kl_loss
            metrics["actor/kl"] = float(kl_loss.detach())
        loss.backward()
        return metrics

    def _critic_loss(self, micro: RolloutBatch, normalisers: dict[str, int]) -> dict[str, float]:
        assert self.critic is not None
        assert micro.returns is not None
        assert micro.values is not None
        predicted = self.critic.values(micro)
        loss, clip_fraction = algorithms.value_loss(
            predicted,
            micro.returns,
            micro.values,
            micro.response_mask,
            clip_range=self.algorithm.value_clip,
            agg_mode=self.algorithm.loss_agg_mode,
            normalisers=normalisers,
        )
        loss.backward()
        share = float(micro.response_mask.sum()) / max(normalisers["batch_num_tokens"], 1)
        return {"critic/vf_loss": float(loss.detach()), "critic/vf_clipfrac": clip_fraction * share}

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on (the reference is the warm start, reloaded on resume)."""
        from expandsearch.checkpoint import capture_rng_state

        state: dict[str, Any] = {
            "step": self.step,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            "rng": capture_rng_state(),
            "engine": _engine_state(self.engine),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
            state["critic_scheduler"] = self.critic_scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from expandsearch.checkpoint import restore_rng_state

        self.step = int(state["step"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        restore_rng_state(state["rng"])
        if state.get("engine") is not None:
            self.engine.load_state_dict(state["engine"])
        _clear_engine_cache(self.engine)
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])

    @property
    def env(self) -> AgentEnv:
        """The environment the episodes are played in."""
        if self._env is None:
            raise RuntimeError(f"task {self.task.name} plays no episodes: the trainer has no environment")
        return self._env

    def close(self) -> None:
        from agent_env.assembly import close_env

        closing = close_env(self._env) if self._env is not None else self.engine.aclose()
        self.loop.run_until_complete(closing)
        self.loop.close()


def _groups(items: Sequence[Item], group_size: int) -> list[list[Item]]:
    """Input-major trajectories (or their scores) cut into their questions' groups."""
    return [list(items[start : start + group_size]) for start in range(0, len(items), group_size)]


def _search_metrics(search: Any) -> dict[str, float]:
    """Batches a failing retriever server passed to the next one so far (``FailoverSearch``; the run goes on and
    the count says how often it had to)."""
    failovers = getattr(search, "failovers", None)
    return {} if failovers is None else {"rollout/retriever_failovers": float(failovers)}


def _clear_engine_cache(engine: Any) -> None:
    """Drop the engine's cross-turn KV cache after the weights changed in place: the cached keys and values were
    computed by the old weights (a remote engine has no such cache)."""
    clear_cache = getattr(engine, "clear_cache", None)
    if clear_cache is not None:
        clear_cache()


def _engine_state(engine: Any) -> dict[str, Any] | None:
    """The engine's sampling state when it has one (an in-process engine; a remote server keeps its own)."""
    state_dict = getattr(engine, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def _frozen_copy(model: Any) -> Any:
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _stack_rows(chunks: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Concatenate per-micro-batch ``(b, r_i)`` tensors, right-padding each to ``width`` columns."""
    padded = [torch.nn.functional.pad(chunk, (0, width - chunk.shape[-1])) for chunk in chunks]
    return torch.cat(padded)


def _mean_rows(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}


def _batch_metrics(batch: RolloutBatch, temperature: float) -> dict[str, float]:
    """What the optimisation saw: advantages, policy tokens, the sampler/trainer log-prob gap."""
    mask = batch.response_mask
    tokens = mask.sum().clamp(min=1)
    metrics = {"batch/policy_tokens": float(mask.sum()), "batch/padded_tokens": float(batch.attention_mask.numel())}
    if batch.advantages is not None:
        metrics["batch/advantage_abs_mean"] = float((batch.advantages.abs() * mask).sum() / tokens)
    if batch.old_log_probs is not None:
        metrics |= _logprob_gap(batch.old_log_probs, batch, temperature)
    if batch.values is not None:
        metrics["critic/values_mean"] = float((batch.values * mask).sum() / tokens)
    metrics |= {f"batch/{key}": value for key, value in batch.extra.items()}
    return metrics


def _logprob_gap(
    log_probs: torch.Tensor, batch: RolloutBatch, temperature: float, share: float = 1.0
) -> dict[str, float]:
    """``batch/rollout_logprob_gap``: mean |trainer log-prob - sampler log-prob| over policy tokens, times ``share``
    (a micro-batch's share of its mini-batch's tokens). The engine's log-probs are the raw model's, so they are
    comparable at temperature 1 only; there they must agree, and a gap means a mismatch bug (re-tokenization,
    misaligned positions)."""
    if temperature != 1.0:
        return {}
    mask = batch.response_mask
    gap = (log_probs - batch.rollout_log_probs).abs() * mask
    return {"batch/rollout_logprob_gap": float(gap.sum() / mask.sum().clamp(min=1)) * share}
