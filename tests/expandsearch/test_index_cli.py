"""Tests for ``expandsearch index``: a real subprocess builds index directories that load and search."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support import run_expandsearch

from retriever_server.corpus import Passage, load_passages, write_wiki18_jsonl
from retriever_server.index_dir import load_index


def expandsearch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_expandsearch(*args, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def corpus(wiki18_passages: tuple[Passage, ...], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "corpus.jsonl"
    write_wiki18_jsonl(wiki18_passages[:40], path)
    return path


@pytest.mark.parametrize(("kind", "extra"), [("bm25", []), ("dense", ["--faiss", "hnsw", "--batch-size", "8"])])
def test_index_round_trip(corpus: Path, tmp_path: Path, kind: str, extra: list[str]) -> None:
    out = tmp_path / "index"
    result = expandsearch("index", "--corpus", corpus, "--kind", kind, "--out", out, *extra)
    assert result.returncode == 0, result.stderr
    assert f"{kind} index of 40 passages" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == kind
    retriever = load_index(out)
    passage = load_passages(corpus)[3]
    # top-3, not top-1: dense retrieval may rank another chunk of the same article first
    assert passage.id in [hit.id for hit in retriever.search(f"{passage.title} {passage.text[:100]}", k=3)]


def test_missing_corpus_is_a_user_error(tmp_path: Path) -> None:
    result = expandsearch("index", "--corpus", tmp_path / "none.jsonl", "--kind", "bm25", "--out", tmp_path / "i")
    assert result.returncode == 2
    assert "corpus file not found" in result.stderr
    assert "Traceback" not in result.stderr
