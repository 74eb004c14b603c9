"""The RL math of the embedded trainer: thin wrappers over ``verl.trainer.ppo.core_algos``.

The embedded trainer and the verl backend must optimise the same objective, so the advantage estimators, the
clipped policy loss, the KL estimators, the value loss and the loss aggregation are verl's own functions. What
lives here is only the glue for our shapes:

- every tensor is ``(batch, response_length)`` over the *response* (policy and environment tokens interleaved,
  right-padded) and ``response_mask`` is 1 on policy-sampled tokens only: environment tokens (passages,
  summaries, feedback) and padding get no advantage, no KL and no loss;
- an episode's scalar reward is placed on its last policy token (an outcome reward), the layout verl's
  estimators expect;
- micro-batches of one mini-batch are normalised by the *mini-batch's* token and sequence counts, so that the
  accumulated gradient equals the gradient of the mini-batch's loss whatever the micro-batch size.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from verl.trainer.ppo import core_algos

if TYPE_CHECKING:
    import torch

LossAggMode = Literal["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KL_ESTIMATORS: tuple[str, ...] = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
"""Estimators of KL(policy || reference) per token (http://joschu.net/blog/kl-approx.html); a ``+`` suffix
(``low_var_kl+``) takes the k2 gradient through a straight-through estimator, as verl does."""
ADVANTAGE_ESTIMATORS: tuple[str, ...] = ("grpo", "gae")


def check_kl_estimator(name: str) -> str:
    if name.removesuffix("+") not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; known: {', '.join(KL_ESTIMATORS)} (optionally with '+')")
    return name


def outcome_token_rewards(rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, length)`` token rewards: each episode's scalar reward on its last policy token, zero elsewhere.

    An episode without any policy token (impossible from the environment, but cheap to guard) gets no reward.
    """
    import torch

    token_rewards = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    positions = torch.arange(response_mask.shape[-1], device=response_mask.device)
    last = torch.where(response_mask.bool(), positions, -1).amax(dim=-1)
    has_policy_token = last >= 0
    rows = torch.arange(len(rewards), device=rewards.device)[has_policy_token]
    token_rewards[rows, last[has_policy_token]] = rewards[has_policy_token].float()
    return token_rewards


def grpo_advantages(
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: Sequence[Hashable],
    *,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """GRPO: each episode's reward minus its group's mean (divided by the group's std unless ``norm_by_std`` is
    False, Dr. GRPO), broadcast over its policy tokens. A group is the samples of one question."""
    if len(group_ids) != len(rewards):
        raise ValueError(f"{len(group_ids)} group ids for {len(rewards)} rewards")
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=outcome_token_rewards(rewards, response_mask),
        response_mask=response_mask,
        index=np.array(list(group_ids), dtype=object),
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    return advantages


def gae_advantages(
    token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's generalised advantage estimate and returns over policy tokens only.

    verl's GAE skips masked positions: the value and TD error of an environment token are carried over, so the
    recursion runs over the policy tokens as if the observations were not there (tested against GAE on the
    compacted policy-only sequence). Advantages come back whitened over the policy tokens; both are zeroed off
    them (verl leaves the carried-over values there).
    """
    import torch

    advantages, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=token_rewards,
        values=values,
        response_mask=response_mask,
        gamma=torch.tensor(gamma),
        lam=torch.tensor(lam),
    )
    return advantages * response_mask, returns * response_mask


def kl_estimate(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs."""
    return core_algos.kl_penalty(log_probs, ref_log_probs, check_kl_estimator(estimator))  # type: ignore[arg-type]


def kl_penalised_rewards(
    token_rewards: torch.Tensor,
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    coef: float,
    estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL in the reward (the original PPO-RLHF form): ``r_t - coef * KL_t`` on policy tokens; returns the shaped
    rewards and the per-token KL (zero on environment tokens)."""
    kl = kl_estimate(log_probs, ref_log_probs, estimator) * response_mask
    return token_rewards - coef * kl, kl


def loss_normalisers(response_mask: torch.Tensor) -> dict[str, int]:
    """The mini-batch counts that make each micro-batch's :func:`aggregate` a share of the mini-batch loss."""
    return {
        "batch_num_tokens": int(response_mask.sum()),
        "global_batch_size": int((response_mask.sum(dim=-1) > 0).sum()),
    }


def aggregate(
    loss_matrix: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str,
    normalisers: dict[str, int] | None = None,
    *,
    scale_factor: int | None = None,
) -> torch.Tensor:
    """verl's ``agg_loss`` over policy tokens; ``normalisers`` (see :func:`loss_normalisers`) when the batch is a
    micro-batch of a larger mini-batch."""
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; known: {', '.join(LOSS_AGG_MODES)}")
    return core_algos.agg_loss(
        loss_mat=loss_matrix,
        loss_mask=response_mask,
        loss_agg_mode=mode,
        **(normalisers or {}),
        loss_scale_factor=scale_factor,
    )


def policy_loss(
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    agg_mode: str = "token-mean",
    normalisers: dict[str, int] | None = None,
    loss_name: str = "vanilla",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (dual-clip with ``clip_c``) by verl's registered policy loss ``loss_name``.

    Returns the aggregated loss and verl's metrics (``actor/pg_clipfrac``, ``actor/ppo_kl``, …).
    """
    loss_fn = core_algos.get_policy_loss_fn(loss_name)
    loss, metrics = loss_fn(
        old_log_prob=old_log_probs,
        log_prob=log_probs,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=agg_mode,
        config=_actor_config(clip_low, clip_high, clip_c, agg_mode, normalisers),
    )
    return loss, {key: float(value) for key, value in metrics.items()}


def _actor_config(
    clip_low: float, clip_high: float, clip_c: float, agg_mode: str, normalisers: dict[str, int] | None
) -> Any:
    """The verl ``ActorConfig`` its policy losses read their clip ranges and loss normalisers from."""
    from verl.workers.config.actor import ActorConfig

    return ActorConfig(
        strategy="fsdp",  # required by the schema; no FSDP is involved
        ppo_mini_batch_size=1,
        ppo_micro_batch_size_per_gpu=1,
        rollout_n=1,
        clip_ratio=clip_low,
        clip_ratio_low=clip_low,
        clip_ratio_high=clip_high,
        clip_ratio_c=clip_c,
        loss_agg_mode=agg_mode,
        global_batch_info=dict(normalisers or {}),
    )


def value_loss(
    predicted: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_range: float = 0.5,
    agg_mode: str = "token-mean",
    normalisers: dict[str, int] | None = None,
) -> tuple[torch.Tensor, float]:
    """verl's clipped value loss (0.5 * max of clipped and unclipped squared errors) and its clip fraction."""
    loss, clip_fraction = core_algos.compute_value_loss(
        vpreds=predicted,
        returns=returns,
        values=old_values,
        response_mask=response_mask,
        cliprange_value=clip_range,
        loss_agg_mode=agg_mode,
        **(normalisers or {}),
    )
    return loss, float(clip_fraction)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of every row of ``logits`` (verl's numerically stable form)."""
    from verl.utils.torch_functional import entropy_from_logits as verl_entropy

    return verl_entropy(logits)
