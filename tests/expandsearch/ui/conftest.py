"""The UI's test index: the tiny world's BM25 index with one hostile passage in it (``ui_support.EVIL_TITLE``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ui_support import EVIL_TEXT, EVIL_TITLE

from data_prep.synthetic import World
from retriever_server.corpus import Passage, write_wiki18_jsonl
from retriever_server.index_dir import build_index


@pytest.fixture(scope="session")
def ui_index_dir(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui_index")
    passages = [*tiny_world.passages, Passage("evil-1", EVIL_TITLE, EVIL_TEXT)]
    write_wiki18_jsonl(passages, folder / "corpus.jsonl")
    build_index(folder / "corpus.jsonl", "bm25", folder / "index", progress=False)
    return folder / "index"
