"""Real pieces for the evaluation tests: the tiny world's BM25 index and the tiny policy's tokenizer.

Policies that must write given turns are :class:`~agent_env.scripted.ScriptedPolicy` scripts (a real engine
interface, decoding through the real tokenizer); the scripted expert of ``data_prep`` plays whole episodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data_prep.synthetic import World
from retriever_server.bm25 import BM25Index


@pytest.fixture(scope="session")
def policy_tokenizer(tiny_policy_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)


@pytest.fixture(scope="session")
def world_bm25(tiny_world: World) -> BM25Index:
    index = BM25Index.build(tiny_world.passages)
    index.search("warm up numba")  # the first numba retrieval compiles for seconds
    return index
