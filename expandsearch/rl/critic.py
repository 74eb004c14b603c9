"""PPO's critic: a separate copy of the policy's backbone with a scalar value head.

A separate model (not a head on the policy's own backbone) keeps the value regression from pulling on the policy's
features, and lets the critic warm up alone; initialising it from the warm-started policy gives it features that
already read the task (verl's default too: the critic starts from the actor's checkpoint).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from expandsearch.rl.batch import RolloutBatch, response_hidden_states

if TYPE_CHECKING:
    from pathlib import Path


class ValueModel(nn.Module):
    """``values(batch) -> (B, R)``: the value of the state before each response token (0 off policy tokens)."""

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        # A zero head predicts 0 everywhere at first: the outcome reward's scale, with no random initial bias.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_policy(cls, policy: Any) -> ValueModel:
        backbone = copy.deepcopy(policy.base_model)
        return cls(backbone, policy.config.hidden_size)

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        hidden = response_hidden_states(self.backbone, batch)
        return self.value_head(hidden).squeeze(-1).float() * batch.response_mask

    def save(self, out_dir: str | Path) -> None:
        torch.save(self.state_dict(), f"{out_dir}/critic.pt")
