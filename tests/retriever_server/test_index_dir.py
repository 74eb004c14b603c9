"""Tests for retriever_server.index_dir: build and load every kind, manifest contents and validation errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retriever_server.base import Retriever
from retriever_server.bm25 import BM25Index
from retriever_server.corpus import Passage, write_wiki18_jsonl
from retriever_server.dense import DenseIndex
from retriever_server.hybrid import HybridRetriever
from retriever_server.index_dir import FORMAT_VERSION, MANIFEST, IndexDirError, build_index, load_index

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def passages(wiki18_passages: tuple[Passage, ...]) -> list[Passage]:
    return list(wiki18_passages[:60])


@pytest.fixture(scope="module")
def corpus(passages: list[Passage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_wiki18_jsonl(passages, path)
    return path


@pytest.fixture(scope="module")
def hybrid_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hybrid")
    build_index(corpus, "hybrid", out, faiss="sq8", chunk_rows=32, progress=False)
    return out


@pytest.fixture
def bm25_dir(corpus: Path, tmp_path: Path) -> Path:
    build_index(corpus, "bm25", tmp_path / "bm25", progress=False)
    return tmp_path / "bm25"


def test_manifest_describes_the_build(hybrid_dir: Path, corpus: Path) -> None:
    manifest = json.loads((hybrid_dir / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["kind"] == "hybrid"
    assert manifest["corpus"]["path"] == str(corpus.resolve())
    assert len(manifest["corpus"]["sha256"]) == 64
    assert manifest["corpus"]["passages"] == 60
    dense = manifest["dense"]
    assert (dense["encoder"], dense["dim"], dense["pooling"], dense["faiss"]) == ("minilm", 384, "mean", "sq8")
    assert dense["bytes_per_vector"] == 384
    assert manifest["created"].endswith("+00:00")


def test_hybrid_round_trip(hybrid_dir: Path, passages: list[Passage]) -> None:
    retriever = load_index(hybrid_dir)
    assert isinstance(retriever, HybridRetriever)
    assert isinstance(retriever, Retriever)
    assert isinstance(retriever.dense, DenseIndex)
    assert len(retriever) == 60
    hits = retriever.search(f"{passages[5].title} {passages[5].text[:80]}", k=3)
    assert hits[0].id == passages[5].id
    assert retriever.describe()["dense"]["faiss"] == "sq8"


def test_bm25_dir_uses_the_store_not_a_corpus_copy(bm25_dir: Path, passages: list[Passage]) -> None:
    assert not list(bm25_dir.rglob(BM25Index.CORPUS_FILE))
    retriever = load_index(bm25_dir)
    assert isinstance(retriever, BM25Index)
    assert retriever.search(passages[7].title, k=1)[0].title == passages[7].title


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(IndexDirError, match=r"no manifest\.json"):
        load_index(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[:-20], "corrupt manifest"),
        (lambda text: "[1, 2]", "expected a JSON object"),
        (lambda text: text.replace('"format_version": 1', '"format_version": 99'), "format version 99"),
        (lambda text: text.replace('"kind": "bm25"', '"kind": "splade"'), "unknown index kind"),
        (lambda text: text.replace('"passages": 60', '"passages": 61'), "says 61 passages but the store holds 60"),
    ],
)
def test_manifest_validation(bm25_dir: Path, edit: object, message: str) -> None:
    manifest = bm25_dir / MANIFEST
    manifest.write_text(edit(manifest.read_text()))  # type: ignore[operator]
    with pytest.raises(IndexDirError, match=message):
        load_index(bm25_dir)


def test_missing_store(bm25_dir: Path) -> None:
    (bm25_dir / "passages.arrow").unlink()
    with pytest.raises(IndexDirError, match="cannot open the passage store"):
        load_index(bm25_dir)


def test_build_errors(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(corpus, "splade", tmp_path)
    with pytest.raises(ValueError, match="unknown FAISS index kind"):
        build_index(corpus, "dense", tmp_path, faiss="lsh")
    with pytest.raises(FileNotFoundError):
        build_index(tmp_path / "none.jsonl", "bm25", tmp_path)
