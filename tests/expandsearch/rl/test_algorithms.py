"""The RL math wrappers over verl, checked against hand-computed values on tiny tensors.

Every tensor is ``(batch, response_length)`` over the response; ``response_mask`` is 1 on policy tokens only, so
environment tokens (retrieved passages inside the response) and padding must get no reward, advantage or loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from expandsearch.rl.algorithms import (
    LOSS_AGG_MODES,
    aggregate,
    check_kl_estimator,
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    kl_estimate,
    kl_penalised_rewards,
    loss_normalisers,
    outcome_token_rewards,
    policy_loss,
    value_loss,
)

torch.set_num_threads(1)

MICRO_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def _mask(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- outcome_token_rewards -------------------------------------------------------------------------------------


def test_outcome_reward_sits_on_last_policy_token() -> None:
    mask = _mask(
        [1, 1, 1, 0, 0, 0],  # policy tokens then padding
        [1, 1, 0, 1, 0, 0],  # last policy token followed by environment tokens (or padding)
        [1, 0, 0, 1, 1, 1],  # policy token at the very end
        [0, 0, 0, 0, 0, 0],  # no policy token at all
    )
    rewards = torch.tensor([0.5, -1.0, 2.0, 7.0])
    expected = torch.zeros(4, 6)
    expected[0, 2] = 0.5
    expected[1, 3] = -1.0
    expected[2, 5] = 2.0
    token_rewards = outcome_token_rewards(rewards, mask)
    assert token_rewards.dtype == torch.float32
    torch.testing.assert_close(token_rewards, expected, atol=0, rtol=0)


def test_outcome_reward_accepts_integer_rewards_and_mask() -> None:
    mask = torch.tensor([[1, 0, 1, 0]], dtype=torch.long)
    token_rewards = outcome_token_rewards(torch.tensor([3]), mask)
    torch.testing.assert_close(token_rewards, torch.tensor([[0.0, 0.0, 3.0, 0.0]]), atol=0, rtol=0)


# --- grpo_advantages -------------------------------------------------------------------------------------------

GRPO_MASK = _mask(
    [1, 1, 0, 0, 1, 0],
    [1, 0, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 0],
    [1, 1, 0, 1, 1, 0],
    [1, 1, 1, 0, 0, 0],
)


def test_grpo_advantages_two_interleaved_groups() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 0.5, 0.0])
    groups = ["a", "b", "a", "b", "a", "b"]
    # group a: rewards 1, 0, 0.5 -> mean 0.5, unbiased std sqrt((0.25 + 0.25 + 0) / 2) = 0.5
    # group b: rewards 0, 3, 0   -> mean 1,   unbiased std sqrt((1 + 4 + 1) / 2) = sqrt(3)
    eps = 1e-6
    std_b = math.sqrt(3.0)
    per_row = torch.tensor(
        [
            (1.0 - 0.5) / (0.5 + eps),
            (0.0 - 1.0) / (std_b + eps),
            (0.0 - 0.5) / (0.5 + eps),
            (3.0 - 1.0) / (std_b + eps),
            (0.5 - 0.5) / (0.5 + eps),
            (0.0 - 1.0) / (std_b + eps),
        ]
    )
    advantages = grpo_advantages(rewards, GRPO_MASK, groups)
    assert advantages.shape == GRPO_MASK.shape
    torch.testing.assert_close(advantages, per_row[:, None] * GRPO_MASK, atol=1e-6, rtol=0)
    assert (advantages[GRPO_MASK == 0] == 0).all()


def test_grpo_advantages_without_std_normalisation() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 0.5, 0.0])
    groups = ["a", "b", "a", "b", "a", "b"]
    per_row = torch.tensor([0.5, -1.0, -0.5, 2.0, 0.0, -1.0])
    advantages = grpo_advantages(rewards, GRPO_MASK, groups, norm_by_std=False)
    torch.testing.assert_close(advantages, per_row[:, None] * GRPO_MASK, atol=1e-6, rtol=0)


def test_grpo_all_equal_group_gets_zero_advantage() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    groups = ["same", "same", "same", "mixed", "mixed", "mixed"]
    advantages = grpo_advantages(rewards, GRPO_MASK, groups)
    assert (advantages[:3] == 0).all()
    # mixed group: mean 1/3, unbiased std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3)
    std = math.sqrt(1.0 / 3.0)
    per_row = torch.tensor([-1.0 / 3.0, 2.0 / 3.0, -1.0 / 3.0]) / (std + 1e-6)
    torch.testing.assert_close(advantages[3:], per_row[:, None] * GRPO_MASK[3:], atol=1e-6, rtol=0)


def test_grpo_mismatched_group_ids_raise() -> None:
    with pytest.raises(ValueError, match="group ids"):
        grpo_advantages(torch.zeros(6), GRPO_MASK, ["a"] * 5)


# --- gae_advantages --------------------------------------------------------------------------------------------


def _compact_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], ...]:
    """Textbook GAE on a sequence with no gaps; the value after the last step is 0."""
    n = len(rewards)
    advantages = [0.0] * n
    running = 0.0
    for k in reversed(range(n)):
        next_value = values[k + 1] if k + 1 < n else 0.0
        delta = rewards[k] + gamma * next_value - values[k]
        running = delta + gamma * lam * running
        advantages[k] = running
    returns = [a + v for a, v in zip(advantages, values, strict=True)]
    return advantages, returns


def test_gae_equals_gae_on_the_compacted_policy_sequence() -> None:
    gamma, lam = 0.9, 0.8
    mask = _mask(
        [1, 1, 0, 0, 1, 0, 1, 0],  # environment tokens interleaved, then padding
        [1, 0, 1, 1, 0, 0, 0, 0],
    )
    rewards = torch.tensor([1.0, -0.5])
    token_rewards = outcome_token_rewards(rewards, mask)
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(mask.shape, generator=generator)

    advantages, returns = gae_advantages(token_rewards, values, mask, gamma=gamma, lam=lam)

    raw: list[float] = []
    expected_returns = torch.zeros_like(values)
    positions_per_row = []
    for row in range(len(mask)):
        positions = mask[row].nonzero().squeeze(-1).tolist()
        positions_per_row.append(positions)
        row_rewards = [0.0] * (len(positions) - 1) + [float(rewards[row])]
        row_values = [float(values[row, p]) for p in positions]
        row_adv, row_ret = _compact_gae(row_rewards, row_values, gamma, lam)
        raw += row_adv
        for p, r in zip(positions, row_ret, strict=True):
            expected_returns[row, p] = r
    raw_tensor = torch.tensor(raw, dtype=torch.float64)
    whitened = (raw_tensor - raw_tensor.mean()) / torch.sqrt(raw_tensor.var(unbiased=True) + 1e-8)

    policy = mask.bool()
    got = torch.cat([advantages[row, positions_per_row[row]] for row in range(len(mask))])
    torch.testing.assert_close(got.double(), whitened, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns[policy], expected_returns[policy], atol=1e-5, rtol=1e-5)

    # whitened over policy tokens: masked mean ~0, masked (unbiased) variance ~1
    masked = advantages[policy]
    assert abs(float(masked.mean())) < 1e-5
    assert abs(float(masked.var(unbiased=True)) - 1.0) < 1e-4


def test_gae_ignores_values_on_environment_tokens() -> None:
    mask = _mask([1, 1, 0, 0, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0, 0, 0])
    token_rewards = outcome_token_rewards(torch.tensor([1.0, -0.5]), mask)
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    other = values.clone()
    other[mask == 0] = 100.0
    adv_a, ret_a = gae_advantages(token_rewards, values, mask, gamma=0.9, lam=0.8)
    adv_b, ret_b = gae_advantages(token_rewards, other, mask, gamma=0.9, lam=0.8)
    policy = mask.bool()
    torch.testing.assert_close(adv_a[policy], adv_b[policy])
    torch.testing.assert_close(ret_a[policy], ret_b[policy])


# --- kl_estimate / kl_penalised_rewards ------------------------------------------------------------------------

LOGP = torch.tensor([[-1.2, -0.3, -2.0], [-0.7, -1.5, -0.1]])
REF = torch.tensor([[-1.0, -0.9, -2.4], [-0.7, -0.2, -0.6]])


def test_kl_k1() -> None:
    for name in ("kl", "k1"):
        torch.testing.assert_close(kl_estimate(LOGP, REF, name), LOGP - REF)


def test_kl_low_var() -> None:
    diff = REF - LOGP
    expected = torch.exp(diff) - diff - 1
    for name in ("low_var_kl", "k3"):
        got = kl_estimate(LOGP, REF, name)
        torch.testing.assert_close(got, expected)
        assert (got >= 0).all()


def test_kl_k2_and_abs() -> None:
    for name in ("k2", "mse"):
        torch.testing.assert_close(kl_estimate(LOGP, REF, name), 0.5 * (LOGP - REF) ** 2)
    torch.testing.assert_close(kl_estimate(LOGP, REF, "abs"), (LOGP - REF).abs())


def test_unknown_kl_estimator_raises() -> None:
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(LOGP, REF, "k4")
    with pytest.raises(ValueError, match="unknown KL estimator"):
        check_kl_estimator("full")


def test_kl_straight_through_has_low_var_forward_and_k2_gradient() -> None:
    assert check_kl_estimator("low_var_kl+") == "low_var_kl+"
    logp = LOGP.clone().requires_grad_(True)
    got = kl_estimate(logp, REF, "low_var_kl+")
    diff = REF - LOGP
    torch.testing.assert_close(got.detach(), torch.exp(diff) - diff - 1)
    got.sum().backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, LOGP - REF)  # d/dlogp of 0.5 (logp - ref)^2


def test_kl_penalised_rewards() -> None:
    mask = _mask([1, 0, 1], [1, 1, 0])
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    shaped, kl = kl_penalised_rewards(token_rewards, LOGP, REF, mask, coef=0.1, estimator="k1")
    expected_kl = (LOGP - REF) * mask
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(shaped, token_rewards - 0.1 * expected_kl)
    env = mask == 0
    assert (kl[env] == 0).all()
    torch.testing.assert_close(shaped[env], token_rewards[env], atol=0, rtol=0)


# --- policy_loss -----------------------------------------------------------------------------------------------

PG_MASK = _mask([1, 1, 0, 0, 1], [1, 0, 1, 1, 0], [1, 1, 1, 0, 0])


def test_policy_loss_on_policy_is_minus_mean_advantage() -> None:
    generator = torch.Generator().manual_seed(2)
    logp = -torch.rand(PG_MASK.shape, generator=generator) * 3
    advantages = torch.randn(PG_MASK.shape, generator=generator)
    loss, metrics = policy_loss(logp, logp, advantages, PG_MASK)
    expected = -(advantages * PG_MASK).sum() / PG_MASK.sum()
    torch.testing.assert_close(loss, expected)
    assert set(metrics) >= {"actor/pg_clipfrac", "actor/ppo_kl"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["actor/pg_clipfrac"] == 0.0
    assert metrics["actor/ppo_kl"] == 0.0


def test_policy_loss_ignores_environment_token_values() -> None:
    generator = torch.Generator().manual_seed(3)
    old = -torch.rand(PG_MASK.shape, generator=generator) * 3
    new = old + 0.3 * torch.randn(PG_MASK.shape, generator=generator)
    advantages = torch.randn(PG_MASK.shape, generator=generator)
    env = PG_MASK == 0
    old_b, new_b, adv_b = old.clone(), new.clone(), advantages.clone()
    old_b[env] = -15.0
    new_b[env] = 2.0
    adv_b[env] = 50.0
    loss_a, metrics_a = policy_loss(old, new, advantages, PG_MASK)
    loss_b, metrics_b = policy_loss(old_b, new_b, adv_b, PG_MASK)
    torch.testing.assert_close(loss_a, loss_b)
    assert metrics_a["actor/pg_clipfrac"] == pytest.approx(metrics_b["actor/pg_clipfrac"])
    assert metrics_a["actor/ppo_kl"] == pytest.approx(metrics_b["actor/ppo_kl"])


def test_policy_loss_clipping_and_its_gradient() -> None:
    mask = _mask([1, 1, 0])
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    advantages = torch.tensor([[2.0, -1.0, 5.0]])
    new = (old + torch.tensor([[math.log(1.5), 0.0, 0.7]])).requires_grad_(True)
    loss, metrics = policy_loss(old, new, advantages, mask, clip_low=0.2, clip_high=0.2)
    # token 0: A=2, ratio 1.5 clipped to 1.2 -> -2.4; token 1: ratio 1 -> +1.0; mean over 2 policy tokens
    assert loss.item() == pytest.approx((-2.0 * 1.2 + 1.0) / 2, abs=1e-6)
    loss.backward()
    assert new.grad is not None
    assert float(new.grad[0, 0]) == 0.0  # clipped: no gradient
    assert float(new.grad[0, 1]) == pytest.approx(0.5, abs=1e-6)  # d(-A r)/dlogp = -A r / N = 1 * 1 / 2
    assert float(new.grad[0, 2]) == 0.0  # environment token
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["actor/ppo_kl"] == pytest.approx(-math.log(1.5) / 2, abs=1e-6)


def test_policy_loss_dual_clip_bounds_negative_advantages() -> None:
    mask = _mask([1])
    old = torch.tensor([[-3.0]])
    new = old + math.log(5.0)  # ratio 5
    loss, _ = policy_loss(old, new, torch.tensor([[-2.0]]), mask, clip_c=3.0)
    # max(-A*5, -A*1.2) = 10, bounded by -A*c = 6
    assert float(loss) == pytest.approx(6.0, abs=1e-5)


# --- aggregation and micro-batch normalisation -----------------------------------------------------------------

AGG_MASK = _mask(
    [1, 1, 0, 0, 1, 0],
    [1, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0],  # a row with no policy token
    [1, 0, 1, 0, 1, 0],
    [1, 1, 1, 0, 0, 0],
)


def _loss_matrix() -> torch.Tensor:
    return torch.randn(AGG_MASK.shape, generator=torch.Generator().manual_seed(4))


def test_aggregate_full_batch_by_hand() -> None:
    loss_mat = _loss_matrix()
    masked = loss_mat * AGG_MASK
    counts = AGG_MASK.sum(-1)
    nonempty = counts > 0
    token_mean = masked.sum() / AGG_MASK.sum()
    seq_token_sum = masked.sum(-1)[nonempty].mean()
    seq_token_mean = (masked.sum(-1)[nonempty] / counts[nonempty]).mean()
    torch.testing.assert_close(aggregate(loss_mat, AGG_MASK, "token-mean"), token_mean)
    torch.testing.assert_close(aggregate(loss_mat, AGG_MASK, "token-sum"), masked.sum())
    torch.testing.assert_close(aggregate(loss_mat, AGG_MASK, "seq-mean-token-sum"), seq_token_sum)
    torch.testing.assert_close(aggregate(loss_mat, AGG_MASK, "seq-mean-token-mean"), seq_token_mean)


def test_loss_normalisers_counts() -> None:
    assert loss_normalisers(AGG_MASK) == {"batch_num_tokens": 16, "global_batch_size": 5}  # 3 + 1 + 6 + 0 + 3 + 3


@pytest.mark.parametrize("mode", MICRO_MODES)
def test_micro_batches_with_normalisers_sum_to_the_batch_aggregate(mode: str) -> None:
    loss_mat = _loss_matrix()
    normalisers = loss_normalisers(AGG_MASK)
    total = sum(
        aggregate(loss_mat[start : start + 2], AGG_MASK[start : start + 2], mode, normalisers) for start in (0, 2, 4)
    )
    torch.testing.assert_close(total, aggregate(loss_mat, AGG_MASK, mode), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", MICRO_MODES)
def test_micro_batch_policy_losses_sum_to_the_batch_loss(mode: str) -> None:
    generator = torch.Generator().manual_seed(5)
    old = -torch.rand(AGG_MASK.shape, generator=generator) * 3
    new = old + 0.4 * torch.randn(AGG_MASK.shape, generator=generator)  # some tokens clip
    advantages = torch.randn(AGG_MASK.shape, generator=generator)
    normalisers = loss_normalisers(AGG_MASK)
    full, _ = policy_loss(old, new, advantages, AGG_MASK, agg_mode=mode)
    parts = [
        policy_loss(
            old[s : s + 2],
            new[s : s + 2],
            advantages[s : s + 2],
            AGG_MASK[s : s + 2],
            agg_mode=mode,
            normalisers=normalisers,
        )[0]
        for s in (0, 2, 4)
    ]
    torch.testing.assert_close(sum(parts), full, atol=1e-6, rtol=0)
    # and the per-micro-batch normaliser really matters: without it the sum differs
    unnormalised = sum(
        policy_loss(old[s : s + 2], new[s : s + 2], advantages[s : s + 2], AGG_MASK[s : s + 2], agg_mode=mode)[0]
        for s in (0, 2, 4)
    )
    assert abs(float(unnormalised) - float(full)) > 1e-3


def test_unknown_aggregation_raises() -> None:
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(_loss_matrix(), AGG_MASK, "seq-sum")
    assert "token-mean" in LOSS_AGG_MODES


# --- value_loss ------------------------------------------------------------------------------------------------


def test_value_loss_is_half_masked_mean_of_clipped_max() -> None:
    mask = _mask([1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 0])
    generator = torch.Generator().manual_seed(6)
    old = torch.randn(mask.shape, generator=generator)
    predicted = old + torch.randn(mask.shape, generator=generator)  # several beyond the 0.5 clip range
    returns = torch.randn(mask.shape, generator=generator)
    clipped = torch.maximum(torch.minimum(predicted, old + 0.5), old - 0.5)
    unclipped_sq = (predicted - returns) ** 2
    clipped_sq = (clipped - returns) ** 2
    expected = 0.5 * (torch.maximum(unclipped_sq, clipped_sq) * mask).sum() / mask.sum()
    expected_clipfrac = ((clipped_sq > unclipped_sq).float() * mask).sum() / mask.sum()
    loss, clipfrac = value_loss(predicted, returns, old, mask, clip_range=0.5)
    torch.testing.assert_close(loss, expected)
    assert isinstance(clipfrac, float)
    assert clipfrac == pytest.approx(float(expected_clipfrac), abs=1e-6)
    assert 0 < clipfrac < 1  # the test data exercises both branches


def test_value_loss_ignores_environment_tokens() -> None:
    mask = _mask([1, 0, 1], [0, 1, 1])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    returns = torch.tensor([[1.0, 9.0, -1.0], [9.0, 0.0, 0.5]])
    loss_a, _ = value_loss(values, returns, values, mask)
    other = returns.clone()
    other[mask == 0] = -100.0
    loss_b, _ = value_loss(values, other, values, mask)
    torch.testing.assert_close(loss_a, loss_b)


# --- entropy ---------------------------------------------------------------------------------------------------


def test_entropy_from_logits_matches_definition() -> None:
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(7)) * 3
    probs = torch.softmax(logits, dim=-1)
    expected = -(probs * torch.log(probs)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), expected, atol=1e-5, rtol=1e-5)
