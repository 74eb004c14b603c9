"""RolloutBatch layout, row selection and the policy forward, checked against plain unpadded forwards of a tiny
real Qwen2 (random weights, locally trained tokenizer)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from agent_env.episode import Trajectory
from agent_env.tiny_model import TinyQwen2Config, build_tiny_qwen2, train_tokenizer
from expandsearch.rl.batch import RolloutBatch, policy_log_probs, response_hidden_states

torch.set_num_threads(1)

TEXTS = [
    "Who wrote the novel about the whale? <search> whale novel author </search>",
    "<information> Moby-Dick is an 1851 novel by Herman Melville. </information>",
    "<answer> Herman Melville </answer> The capital of France is Paris.",
    "<think> I should search for the answer first. </think>",
]

# (prompt length, response mask): environment tokens (0 inside the response) interleaved with policy tokens
LAYOUT = (
    (3, [1, 1, 0, 0, 1, 1]),
    (5, [1, 0, 1, 1]),
    (2, [1, 1, 1, 0, 0, 0, 1]),
)
PROMPT_WIDTH = 5
RESPONSE_LENGTH = 7


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    # a large init range gives context-dependent, far-from-uniform distributions, so the comparisons mean something
    config = TinyQwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, initializer_range=0.3)
    return build_tiny_qwen2(tokenizer, config, seed=0)


@pytest.fixture(scope="module")
def trajectories(tokenizer: Any) -> list[Trajectory]:
    generator = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)
    result = []
    for row, (prompt_length, mask) in enumerate(LAYOUT):
        ids = torch.randint(3, vocab, (prompt_length + len(mask),), generator=generator).tolist()
        # environment tokens carry a nonzero "log-prob" on purpose: the batch must zero it
        logprobs = (-torch.rand(len(mask), generator=generator) - 0.1).tolist()
        result.append(
            Trajectory(
                prompt_ids=ids[:prompt_length],
                response_ids=ids[prompt_length:],
                response_mask=mask,
                response_logprobs=logprobs,
                reward=float(row) - 0.5,
                answer=None,
                num_turns=1,
                termination="answer",
                metrics={},
                turns=[],
                question=f"q{row}",
                golden_answers=[],
            )
        )
    return result


@pytest.fixture(scope="module")
def batch(trajectories: list[Trajectory], tokenizer: Any) -> RolloutBatch:
    return RolloutBatch.from_trajectories(trajectories, tokenizer.pad_token_id, ["g0", "g1", "g0"])


def _reference_log_probs_and_entropy(model: Any, trajectory: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response token: log-prob of the token and entropy of its next-token distribution, from a plain
    unpadded forward of prompt + response."""
    ids = torch.tensor([trajectory.prompt_ids + trajectory.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    p = len(trajectory.prompt_ids)
    predicting = torch.log_softmax(logits[p - 1 : p - 1 + len(trajectory.response_ids)], dim=-1)
    tokens = torch.tensor(trajectory.response_ids)
    log_probs = predicting.gather(-1, tokens[:, None]).squeeze(-1)
    entropy = -(predicting.exp() * predicting).sum(-1)
    return log_probs, entropy


# --- layout ----------------------------------------------------------------------------------------------------


def test_from_trajectories_layout(batch: RolloutBatch, trajectories: list[Trajectory], tokenizer: Any) -> None:
    pad = tokenizer.pad_token_id
    width = PROMPT_WIDTH + RESPONSE_LENGTH
    assert batch.prompt_width == PROMPT_WIDTH
    assert batch.input_ids.shape == (3, width)
    assert batch.attention_mask.shape == (3, width)
    assert batch.position_ids.shape == (3, width)
    assert batch.response_mask.shape == (3, RESPONSE_LENGTH)
    assert batch.rollout_log_probs.shape == (3, RESPONSE_LENGTH)
    assert len(batch) == 3
    assert batch.group_ids == ["g0", "g1", "g0"]
    torch.testing.assert_close(batch.rewards, torch.tensor([-0.5, 0.5, 1.5]))

    for row, trajectory in enumerate(trajectories):
        p, r = len(trajectory.prompt_ids), len(trajectory.response_ids)
        left = PROMPT_WIDTH - p
        expected_ids = [pad] * left + trajectory.prompt_ids + trajectory.response_ids + [pad] * (RESPONSE_LENGTH - r)
        assert batch.input_ids[row].tolist() == expected_ids
        expected_attention = [0] * left + [1] * (p + r) + [0] * (RESPONSE_LENGTH - r)
        assert batch.attention_mask[row].tolist() == expected_attention
        # positions count from the row's first real token; left padding sits at 0
        assert batch.position_ids[row, left : left + p + r].tolist() == list(range(p + r))
        assert batch.position_ids[row, :left].tolist() == [0] * left
        assert batch.response_mask[row].tolist() == [float(m) for m in trajectory.response_mask] + [0.0] * (
            RESPONSE_LENGTH - r
        )
        assert batch.response_ids[row, :r].tolist() == trajectory.response_ids
        expected_lp = [
            lp if m else 0.0 for lp, m in zip(trajectory.response_logprobs, trajectory.response_mask, strict=True)
        ]
        torch.testing.assert_close(
            batch.rollout_log_probs[row], torch.tensor(expected_lp + [0.0] * (RESPONSE_LENGTH - r)), atol=0, rtol=0
        )
    assert batch.response_mask.dtype.is_floating_point


def test_from_trajectories_rejects_an_empty_list(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="no trajectories"):
        RolloutBatch.from_trajectories([], tokenizer.pad_token_id, [])


# --- the policy forward ----------------------------------------------------------------------------------------


def test_policy_log_probs_match_unpadded_forwards(
    model: Any, batch: RolloutBatch, trajectories: list[Trajectory]
) -> None:
    with torch.no_grad():
        log_probs, entropy = policy_log_probs(model, batch, with_entropy=True)
    assert log_probs.shape == entropy.shape == (3, RESPONSE_LENGTH)
    policy = batch.response_mask.bool()
    assert (log_probs[~policy] == 0).all()
    assert (entropy[~policy] == 0).all()
    assert (entropy[policy] >= 0).all()
    assert (log_probs[policy] < 0).all()
    for row, trajectory in enumerate(trajectories):
        reference_lp, reference_entropy = _reference_log_probs_and_entropy(model, trajectory)
        r = len(trajectory.response_ids)
        row_policy = policy[row, :r]
        torch.testing.assert_close(log_probs[row, :r][row_policy], reference_lp[row_policy], atol=1e-5, rtol=0)
        torch.testing.assert_close(entropy[row, :r][row_policy], reference_entropy[row_policy], atol=1e-5, rtol=0)
    # the reference is far from uniform, so matching it is a real check of the alignment
    assert float(log_probs[policy].std()) > 0.1


def test_policy_log_probs_without_entropy(model: Any, batch: RolloutBatch) -> None:
    with torch.no_grad():
        log_probs, entropy = policy_log_probs(model, batch)
        with_entropy, _ = policy_log_probs(model, batch, with_entropy=True)
    assert entropy is None
    torch.testing.assert_close(log_probs, with_entropy, atol=0, rtol=0)


def test_response_hidden_states_shape(model: Any, batch: RolloutBatch) -> None:
    with torch.no_grad():
        hidden = response_hidden_states(model.base_model, batch)
    assert hidden.shape == (3, RESPONSE_LENGTH, model.config.hidden_size)


@pytest.mark.parametrize(
    ("rows", "prompt_width", "response_length"),
    [
        ([0, 1], 5, 6),  # responses trimmed on the right
        ([2, 0], 3, 7),  # prompts trimmed on the left
        ([1], 5, 4),  # both
    ],
)
def test_select_trims_columns_and_keeps_log_probs(
    model: Any, batch: RolloutBatch, rows: list[int], prompt_width: int, response_length: int
) -> None:
    sub = batch.select(rows)
    assert len(sub) == len(rows)
    assert sub.prompt_width == prompt_width
    assert sub.input_ids.shape == (len(rows), prompt_width + response_length)
    assert sub.response_mask.shape == (len(rows), response_length)
    assert sub.group_ids == [batch.group_ids[row] for row in rows]
    torch.testing.assert_close(sub.rewards, batch.rewards[rows])
    with torch.no_grad():
        full, _ = policy_log_probs(model, batch)
        picked, _ = policy_log_probs(model, sub)
    torch.testing.assert_close(picked, full[rows, :response_length], atol=1e-5, rtol=0)
    assert (full[rows, response_length:] == 0).all()
    torch.testing.assert_close(sub.rollout_log_probs, batch.rollout_log_probs[rows, :response_length], atol=0, rtol=0)


def test_select_carries_optional_tensors(batch: RolloutBatch) -> None:
    advantages = torch.arange(3 * RESPONSE_LENGTH, dtype=torch.float32).reshape(3, RESPONSE_LENGTH)
    full = RolloutBatch(**{**batch.__dict__, "advantages": advantages, "extra": {"note": 1}})
    sub = full.select([1])
    assert sub.advantages is not None
    torch.testing.assert_close(sub.advantages, advantages[[1], :4], atol=0, rtol=0)
    assert sub.old_log_probs is None
    assert sub.extra == {"note": 1}


def test_split_sizes(batch: RolloutBatch) -> None:
    assert [len(part) for part in batch.split(2)] == [2, 1]
    assert [len(part) for part in batch.split(1)] == [1, 1, 1]
    assert [len(part) for part in batch.split(5)] == [3]
    parts = batch.split(2)
    assert parts[0].group_ids == ["g0", "g1"]
    assert parts[1].group_ids == ["g0"]
    torch.testing.assert_close(torch.cat([part.rewards for part in parts]), batch.rewards)


def test_gradient_flows_to_the_parameters(model: Any, batch: RolloutBatch) -> None:
    model.zero_grad(set_to_none=True)
    try:
        log_probs, entropy = policy_log_probs(model, batch, with_entropy=True)
        assert log_probs.requires_grad
        assert entropy is not None
        (log_probs.sum() + entropy.sum()).backward()
        grads = {name: param.grad for name, param in model.named_parameters()}
        assert grads["model.embed_tokens.weight"] is not None
        assert float(grads["model.embed_tokens.weight"].abs().sum()) > 0
        q_proj = grads["model.layers.0.self_attn.q_proj.weight"]
        assert q_proj is not None
        assert float(q_proj.abs().sum()) > 0
    finally:
        model.zero_grad(set_to_none=True)


def test_temperature_divides_the_logits(model: Any, batch: RolloutBatch, trajectories: list[Trajectory]) -> None:
    with torch.no_grad():
        log_probs, _ = policy_log_probs(model, batch, temperature=2.0)
        trajectory = trajectories[0]
        ids = torch.tensor([trajectory.prompt_ids + trajectory.response_ids])
        logits = model(input_ids=ids).logits[0].float() / 2.0
    p, r = len(trajectory.prompt_ids), len(trajectory.response_ids)
    expected = torch.log_softmax(logits[p - 1 : p - 1 + r], dim=-1).gather(
        -1, torch.tensor(trajectory.response_ids)[:, None]
    )
    policy = batch.response_mask[0, :r].bool()
    torch.testing.assert_close(log_probs[0, :r][policy], expected.squeeze(-1)[policy], atol=1e-5, rtol=0)
