"""Learning-rate schedules of the RL optimisers: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expandsearch.rl.config import OptimSection


def lr_lambda(optim: OptimSection, total_updates: int) -> Callable[[int], float]:
    """``LambdaLR`` multiplier of the peak lr after ``update`` optimizer updates (0-based)."""

    def factor(update: int) -> float:
        if update < optim.warmup_steps:
            return (update + 1) / (optim.warmup_steps + 1)
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (update - optim.warmup_steps) / max(1, total_updates - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
