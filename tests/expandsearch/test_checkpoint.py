"""Checkpoints are atomic, pruned, found by latest_checkpoint, load with weights_only, and resume bit-exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from expandsearch.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _names(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / CHECKPOINT_DIR).iterdir())


def test_save_is_atomic_and_leaves_no_temp_dir(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 10, {"step": 10, "w": torch.arange(3)})
    assert path == tmp_path / CHECKPOINT_DIR / "step_0000010"
    assert _names(tmp_path) == ["step_0000010"]
    assert json.loads((path / "meta.json").read_text())["step"] == 10
    state = load_checkpoint(path)
    assert state["step"] == 10
    assert torch.equal(state["w"], torch.arange(3))


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 5, {"v": 1})
    path = save_checkpoint(tmp_path, 5, {"v": 2})
    assert load_checkpoint(path)["v"] == 2
    assert _names(tmp_path) == ["step_0000005"]


def test_keep_last_prunes_older_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert _names(tmp_path) == ["step_0000003", "step_0000004"]
    # The checkpoint just written survives even when newer steps exist.
    save_checkpoint(tmp_path, 2, {"step": 2}, keep_last=1)
    assert "step_0000002" in _names(tmp_path)
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, 9, {}, keep_last=0)
    with pytest.raises(ValueError, match="non-negative"):
        save_checkpoint(tmp_path, -1, {})


def test_latest_ignores_half_written_and_incomplete_dirs(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 3, {"step": 3})
    root = tmp_path / CHECKPOINT_DIR
    (root / ".tmp-step_0000009-12345").mkdir()  # a save killed mid-write
    (root / ".tmp-step_0000009-12345" / "state.pt").write_bytes(b"partial")
    (root / "step_0000007").mkdir()  # no meta.json
    (root / "step_0000007" / "state.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == root / "step_0000003"
    # The next save removes the stale temp dir.
    save_checkpoint(tmp_path, 4, {"step": 4}, keep_last=5)
    assert not any(name.startswith(".tmp-") for name in _names(tmp_path))
    assert latest_checkpoint(tmp_path) == root / "step_0000004"


def test_corrupt_or_missing_state_raises_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, {"step": 1})
    (path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="step_0000001"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_generator_state_round_trips(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(123)
    torch.rand(5, generator=gen)
    path = save_checkpoint(tmp_path, 1, {"gen": gen.get_state()})
    expected = torch.rand(4, generator=gen)
    fresh = torch.Generator()
    fresh.set_state(load_checkpoint(path)["gen"])
    assert torch.equal(torch.rand(4, generator=fresh), expected)


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the legacy state
    path = save_checkpoint(tmp_path, 1, {"rng": capture_rng_state()})
    expected = (torch.rand(3), random.random(), np.random.standard_normal(2))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.array_equal(np.random.standard_normal(2), expected[2])


def _build(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    return model, optimizer, scheduler


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    # Data and dropout-like noise come from the global RNGs, so a resume must restore them to match.
    x = torch.randn(5, 4)
    noise = random.random()
    loss = ((model(x) - noise) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_resume_from_checkpoint_is_bit_exact(tmp_path: Path) -> None:
    random.seed(0)
    model, optimizer, scheduler = _build(0)
    for _ in range(3):
        _train_step(model, optimizer, scheduler)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        "step": 3,
        "data": {"epoch": 0, "index": 15, "order": [3, 1, 2]},
    }
    path = save_checkpoint(tmp_path, 3, state)
    _train_step(model, optimizer, scheduler)  # the uninterrupted run continues

    loaded = load_checkpoint(path)
    fresh_model, fresh_optimizer, fresh_scheduler = _build(42)  # different init: everything must come from disk
    fresh_model.load_state_dict(loaded["model"])
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    fresh_scheduler.load_state_dict(loaded["scheduler"])
    restore_rng_state(loaded["rng"])
    assert loaded["step"] == 3
    assert loaded["data"] == {"epoch": 0, "index": 15, "order": [3, 1, 2]}
    _train_step(fresh_model, fresh_optimizer, fresh_scheduler)

    for expected, actual in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(expected, actual)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
