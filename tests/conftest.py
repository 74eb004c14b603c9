"""Shared test helpers: the location of the read-only real data beside the repository, and its wiki-18 sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_env.protocol import build_prompt
from agent_env.tiny_model import save_tiny_policy
from data_prep.synthetic import WORLD_SIZES, World, generate_world
from retriever_server.corpus import Passage, load_passages

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
"""Real QA samples and corpora (see its README.md); CI clones the repository with ``shared/`` beside it."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA.resolve()} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wiki18_passages(shared_data: Path) -> tuple[Passage, ...]:
    """The 7,923 passages of the shared wiki-18 sample, parsed once per session (tests take slices)."""
    return tuple(load_passages(shared_data / "wiki18_sample" / "wiki18_passages7923.jsonl"))


@pytest.fixture(scope="session")
def tiny_world() -> World:
    """The seed-0 tiny synthetic world (120 people): passages, questions and lexicon for agent tests."""
    return generate_world(WORLD_SIZES["tiny"])


@pytest.fixture(scope="session")
def tiny_policy_dir(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Qwen2 and a BPE tokenizer trained on the tiny world's text, in transformers layout."""
    texts = [f"{passage.title}\n{passage.text}" for passage in tiny_world.passages]
    texts += [example.question for examples in tiny_world.questions.values() for example in examples]
    texts += [build_prompt("placeholder question"), "<search> first query ## second query </search>"]
    return save_tiny_policy(tmp_path_factory.mktemp("tiny_policy"), texts, vocab_size=2048)
