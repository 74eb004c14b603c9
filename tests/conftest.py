"""Shared test helpers: the real data samples (``data_prep.samples``), their wiki-18 passages, tiny worlds, models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent_env.protocol import build_prompt
from agent_env.tiny_model import save_tiny_policy
from data_prep.samples import samples_dir
from data_prep.synthetic import WORLD_SIZES, World, generate_world, write_world
from retriever_server.corpus import Passage, load_passages

WARM_START_MODULES = (
    *(f"tests/expandsearch/rl/{name}.py" for name in ("test_trainer", "test_train_cli", "test_learning")),
    "tests/expandsearch/ui/test_browser.py",
)
"""The modules that use the ``warm_policy_dir`` fixture (below: minutes to build)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # the warm-start modules first: under `make test` their worker starts on the long fixture at once
    items.sort(key=lambda item: not item.nodeid.startswith(WARM_START_MODULES))


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown when it is not loaded (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: the warm-start modules as one unit on one worker, every other test balanced alone.

    xdist's own loadgroup reads ``xdist_group`` marks into node ids, which pytest 9's structured node ids ignore,
    so the grouping is made here, by module, through xdist's scheduler hook.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WarmStartScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return WARM_START_MODULES[0] if nodeid.startswith(WARM_START_MODULES) else nodeid

    return WarmStartScheduling(config, log)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real QA samples and corpora (``data_prep/sample_data``, or ``$EXPANDSEARCH_SAMPLES``).

    They ship inside the repository, so nothing here skips: a missing folder fails every test that reads it.
    """
    folder = samples_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"real data samples not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def wiki18_passages(real_data: Path) -> tuple[Passage, ...]:
    """The 7,923 passages of the wiki-18 sample, parsed once per session (tests take slices)."""
    return tuple(load_passages(real_data / "wiki18_sample" / "wiki18_passages7923.jsonl"))


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


@pytest.fixture(scope="session")
def world_dir(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world written as the trainer reads it."""
    out = tmp_path_factory.mktemp("rl_world")
    write_world(tiny_world, out)
    return out


@pytest.fixture(scope="session")
def warm_policy_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``expandsearch train``'s warm start on the tiny world (train_configs/tiny_cpu.yaml's settings): a 2-layer
    Qwen2 pretrained on the world's search results and behaviour-cloned on the scripted expert, which searches with
    several variants. About 8 minutes on one core; the modules that use it are ``WARM_START_MODULES``."""
    from expandsearch.rl.config import TrainConfig
    from expandsearch.rl.world import warm_start_config
    from expandsearch.world_expert import build_world_policy

    if reuse := os.environ.get("EXPANDSEARCH_TEST_WARM_POLICY"):
        return Path(reuse)  # development only: a warm start this fixture built before (CI never sets it)
    out = tmp_path_factory.mktemp("rl_warm_start")
    build_world_policy(world_dir, out, warm_start_config(TrainConfig()), log=lambda line: None)
    return out
