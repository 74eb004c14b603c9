"""The trainer tests' configs over the main job's warm-started policy on the tiny world (``warm_policy_dir``, in
tests/conftest.py: built once per session).

Real pieces only: the tiny synthetic world, its BM25 index, a tokenizer trained on its text, the default 2-layer
Qwen2 pretrained on the world's search results and behaviour-cloned on the scripted expert's episodes: exactly
``expandsearch train``'s warm start (train_configs/tiny_cpu.yaml), so the learning test starts where the demo's RL
starts. About 8 minutes on one core; under ``pytest -n 2`` (``make test``) every test that uses it runs on one
worker (``WARM_START_MODULES`` in tests/conftest.py), so it is built once while the other worker runs the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from expandsearch.config import config_from_dict
from expandsearch.rl.config import TrainConfig


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One thread: on the 2-core CI machine two torch threads per process fight with the test workers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_config(world_dir: Path, warm_policy_dir: Path) -> Any:
    """``make_config(run_dir, **sections)``: see :func:`train_config`."""
    return lambda run_dir, **sections: train_config(run_dir, world_dir, warm_policy_dir, **sections)


def train_config(run_dir: Path, world_dir: Path, policy_dir: Path, **sections: Any) -> TrainConfig:
    """A few-episode config over the session's world and warm start; ``sections`` override (nested dicts)."""
    base: dict[str, Any] = {
        "run_dir": str(run_dir),
        "steps": 2,
        "checkpoint_every": 1,
        "data": {"world": {"path": str(world_dir)}},
        "policy": {"model": str(policy_dir)},
        "warm_start": {"kind": "none"},
        "rollout": {
            "questions_per_step": 4,
            "group_size": 2,
            "episode": {"max_turns": 3, "max_turn_tokens": 60, "reward": "format"},
        },
        "algorithm": {"mini_batch_size": 4, "micro_batch_size": 2},
        "eval": {"questions": 8},
        "logging": {"progress": False, "plots": False},
    }
    return config_from_dict(TrainConfig, _merge(base, sections))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged
