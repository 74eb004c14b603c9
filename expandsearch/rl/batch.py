"""Trajectories as padded tensors, and the forward passes the trainer runs over them.

Layout (verl's): prompts left-padded to a common width ``P``, responses right-padded to a common length ``R``, so
``input_ids`` is ``(B, P + R)`` and every per-token quantity of the response (log-probs, values, advantages,
masks) is ``(B, R)`` with column ``t`` at absolute position ``P + t``. The hidden state at position ``P + t - 1``
predicts response token ``t`` and is the state the critic values before that token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from agent_env.episode import Trajectory


@dataclass
class RolloutBatch:
    """A batch of episodes for the update; optional tensors are filled in stage by stage."""

    input_ids: torch.Tensor
    """``(B, P + R)``: left-padded prompt, then right-padded response."""
    attention_mask: torch.Tensor
    """``(B, P + R)``: 1 on real tokens (prompt, policy and environment tokens)."""
    position_ids: torch.Tensor
    """``(B, P + R)``: positions counted from each row's first real token."""
    response_mask: torch.Tensor
    """``(B, R)`` float: 1 on policy-sampled tokens, the only ones with log-probs, advantages and loss."""
    rewards: torch.Tensor
    """``(B,)`` the environment's outcome reward of each episode."""
    group_ids: list[str]
    """The question of each episode: GRPO normalises rewards within a group."""
    rollout_log_probs: torch.Tensor
    """``(B, R)`` the sampler's log-probs of the policy tokens (0 elsewhere)."""
    prompt_width: int
    """``P``."""
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trajectories(
        cls,
        trajectories: Sequence[Trajectory],
        pad_token_id: int,
        group_ids: Sequence[str],
        rewards: Sequence[float] | None = None,
    ) -> RolloutBatch:
        """Pad ``trajectories`` into one batch on CPU; ``rewards`` (the task's scores) replace the episodes' own."""
        import torch

        if not trajectories:
            raise ValueError("no trajectories to batch")
        prompt_width = max(len(t.prompt_ids) for t in trajectories)
        response_length = max(max(len(t.response_ids) for t in trajectories), 1)
        size = (len(trajectories), prompt_width + response_length)
        input_ids = torch.full(size, pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(size, dtype=torch.long)
        response_mask = torch.zeros((len(trajectories), response_length))
        rollout_log_probs = torch.zeros((len(trajectories), response_length))
        for row, trajectory in enumerate(trajectories):
            start, end = prompt_width - len(trajectory.prompt_ids), prompt_width + len(trajectory.response_ids)
            input_ids[row, start:end] = torch.tensor(list(trajectory.prompt_ids) + list(trajectory.response_ids))
            attention_mask[row, start:end] = 1
            length = len(trajectory.response_ids)
            response_mask[row, :length] = torch.tensor(trajectory.response_mask, dtype=torch.float32)
            rollout_log_probs[row, :length] = torch.tensor(trajectory.response_logprobs, dtype=torch.float32)
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
            response_mask=response_mask,
            rewards=torch.tensor(
                [t.reward for t in trajectories] if rewards is None else list(rewards), dtype=torch.float32
            ),
            group_ids=list(group_ids),
            rollout_log_probs=rollout_log_probs * response_mask,
            prompt_width=prompt_width,
        )

    def to(self, device: Any) -> RolloutBatch:
        """The batch with every tensor on ``device`` (rollouts are batched on CPU; the policy may be on a GPU)."""
        import torch

        moved: dict[str, Any] = {
            item.name: value.to(device)
            for item in fields(self)
            if isinstance(value := getattr(self, item.name), torch.Tensor)
        }
        return replace(self, **moved)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    def select(self, rows: Sequence[int]) -> RolloutBatch:
        """The given rows, with the columns that are padding in all of them cut away (cheaper forwards)."""
        import torch

        index = torch.tensor(list(rows), dtype=torch.long)
        picked: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "group_ids":
                value = [value[row] for row in rows]
            elif hasattr(value, "index_select") and value.dim() > 0:
                value = value.index_select(0, index)
            picked[item.name] = value
        return _trim(replace(self, **picked))

    def split(self, size: int) -> list[RolloutBatch]:
        """Consecutive chunks of ``size`` rows (the last may be smaller)."""
        return [self.select(range(start, min(start + size, len(self)))) for start in range(0, len(self), size)]


def _trim(batch: RolloutBatch) -> RolloutBatch:
    """Drop leading prompt columns and trailing response columns that no row uses."""
    real = batch.attention_mask.bool()
    used_prompt = real[:, : batch.prompt_width].any(dim=0).nonzero()
    cut_left = int(used_prompt[0]) if len(used_prompt) else batch.prompt_width
    used_response = real[:, batch.prompt_width :].any(dim=0).nonzero()
    keep_response = int(used_response[-1]) + 1 if len(used_response) else 1
    end = batch.prompt_width + keep_response
    trimmed: dict[str, Any] = {"prompt_width": batch.prompt_width - cut_left}
    for item in fields(batch):
        value = getattr(batch, item.name)
        if item.name in ("input_ids", "attention_mask", "position_ids"):
            trimmed[item.name] = value[:, cut_left:end]
        elif hasattr(value, "dim") and value.dim() == 2:  # (B, R) response tensors
            trimmed[item.name] = value[:, :keep_response]
    return replace(batch, **trimmed)


def response_hidden_states(model: Any, batch: RolloutBatch) -> torch.Tensor:
    """``(B, R, H)``: the backbone's hidden state at the position before each response token."""
    hidden = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state
    start = batch.prompt_width - 1
    return hidden[:, start : start + batch.response_mask.shape[-1]]


def policy_log_probs(
    model: Any, batch: RolloutBatch, *, with_entropy: bool = False, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, R)`` log-probs of the response tokens under ``model`` (and the entropy of its next-token distribution),
    computed on policy tokens only and zero elsewhere.

    Logits are computed only where ``response_mask`` is 1: passages and padding need no output layer, which for
    a small model costs more than the transformer itself.
    """
    import torch

    from expandsearch.rl.algorithms import entropy_from_logits

    hidden = response_hidden_states(model.base_model, batch)
    policy = batch.response_mask.bool()
    logits = model.get_output_embeddings()(hidden[policy]).float()
    if temperature != 1.0:
        logits = logits / temperature
    tokens = batch.response_ids[:, : policy.shape[-1]][policy]
    log_probs = torch.zeros(policy.shape, dtype=torch.float32, device=logits.device)
    log_probs[policy] = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return log_probs, None
    entropy = torch.zeros(policy.shape, dtype=torch.float32, device=logits.device)
    entropy[policy] = entropy_from_logits(logits)
    return log_probs, entropy
