"""Tests for retriever_server.dense: encoder conventions with the real MiniLM, FAISS kinds, resumable encoding.

The corpus is 150 real wiki-18 passages (encoding them takes a few seconds on two CPU cores).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from retriever_server.corpus import Passage
from retriever_server.dense import (
    BGE_QUERY_INSTRUCTION,
    ENCODER_FAMILIES,
    FAISS_KINDS,
    DenseIndex,
    Encoder,
    encode_store,
    encoder_for,
    family_name,
)
from retriever_server.store import PassageStore, write_store

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CHUNK = 64


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return encoder_for("minilm", batch_size=32)


@pytest.fixture(scope="module")
def passages(wiki18_passages: tuple[Passage, ...]) -> list[Passage]:
    return list(wiki18_passages[:150])


@pytest.fixture(scope="module")
def store(passages: list[Passage], tmp_path_factory: pytest.TempPathFactory) -> PassageStore:
    path = tmp_path_factory.mktemp("dense") / "passages.arrow"
    write_store(passages, path)
    return PassageStore.open(path)


@pytest.fixture(scope="module")
def index_dir(store: PassageStore, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dense-index")
    DenseIndex.build(store, encoder, directory, kind="flat", chunk_rows=CHUNK, progress=False)
    return directory


@pytest.fixture(scope="module")
def flat(store: PassageStore, encoder: Encoder, index_dir: Path) -> DenseIndex:
    return DenseIndex.load(store, encoder, index_dir, kind="flat")


def queries_for(passages: list[Passage]) -> list[str]:
    # a title plus words from the middle of the passage: a paraphrase-free but not verbatim query
    return [f"{p.title}: {' '.join(p.text.split()[20:32])}" for p in passages[::3]]


# --- encoder conventions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("intfloat/e5-base-v2", "e5"),
        ("/models/e5-large-v2/", "e5"),
        ("BAAI/bge-large-en-v1.5", "bge"),
        ("sentence-transformers/all-MiniLM-L6-v2", "minilm"),
        ("/models/contriever", None),
    ],
)
def test_family_is_chosen_by_name(name: str, family: str | None) -> None:
    assert family_name(name) == family


def test_family_conventions() -> None:
    e5, bge, minilm = ENCODER_FAMILIES["e5"], ENCODER_FAMILIES["bge"], ENCODER_FAMILIES["minilm"]
    assert (e5.pooling, e5.query_prefix, e5.passage_prefix) == ("mean", "query: ", "passage: ")
    assert (bge.pooling, bge.query_prefix, bge.passage_prefix) == ("cls", BGE_QUERY_INSTRUCTION, "")
    assert (minilm.pooling, minilm.query_prefix, minilm.passage_prefix) == ("mean", "", "")


def test_minilm_embeddings_are_unit_float32(encoder: Encoder) -> None:
    vectors = encoder.encode_queries(["who wrote the sound of music", "a second query"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_minilm_matches_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["The Eiffel Tower is in Paris.", "Cats are small carnivorous mammals kept as pets."]
    reference = SentenceTransformer(encoder.path, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode(texts), reference, atol=1e-4)


def test_e5_prefixes_change_the_text_sent(encoder: Encoder) -> None:
    e5 = copy.copy(encoder)
    e5.family = ENCODER_FAMILIES["e5"]
    assert e5.format_queries(["capital of France"]) == ["query: capital of France"]
    assert e5.format_passages(["Paris is the capital."]) == ["passage: Paris is the capital."]
    np.testing.assert_allclose(e5.encode_queries(["capital of France"]), encoder.encode(["query: capital of France"]))
    assert not np.allclose(e5.encode_queries(["capital of France"]), encoder.encode_queries(["capital of France"]))


def test_cls_pooling_differs_from_mean(encoder: Encoder) -> None:
    bge = copy.copy(encoder)
    bge.family = ENCODER_FAMILIES["bge"]
    assert bge.format_queries(["x"]) == [BGE_QUERY_INSTRUCTION + "x"]
    text = ["Cats are small carnivorous mammals."]
    assert not np.allclose(bge.encode(text), encoder.encode(text))
    np.testing.assert_allclose(np.linalg.norm(bge.encode(text), axis=1), 1.0, atol=1e-5)


def test_encoder_for_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no local model directory"):
        encoder_for(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown encoder family"):
        encoder_for("minilm", family="word2vec")


# --- the index --------------------------------------------------------------------------------------------------


def test_flat_finds_passages_by_their_content(flat: DenseIndex, passages: list[Passage]) -> None:
    targets = passages[::3]
    results = flat.batch_search(queries_for(passages), k=3)
    found = sum(any(hit.id == p.id for hit in hits) for p, hits in zip(targets, results, strict=True))
    assert found >= 0.8 * len(targets)
    for hits in results:
        assert len(hits) == 3
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


@pytest.mark.parametrize("kind", [kind for kind in FAISS_KINDS if kind != "flat"])
def test_every_faiss_kind_agrees_with_flat_at_rank_one(
    kind: str, flat: DenseIndex, store: PassageStore, encoder: Encoder, index_dir: Path, passages: list[Passage]
) -> None:
    # the shards are already there: this only builds the FAISS index (replacing the saved flat one; the flat
    # fixture is already in memory)
    approximate = DenseIndex.build(store, encoder, index_dir, kind=kind, chunk_rows=CHUNK, progress=False)
    queries = queries_for(passages)
    exact = [hits[0].id for hits in flat.batch_search(queries, k=1)]
    approx = [hits[0].id for hits in approximate.batch_search(queries, k=1)]
    assert sum(a == b for a, b in zip(exact, approx, strict=True)) >= 0.9 * len(queries)
    info = approximate.describe()
    assert info["faiss"] == kind
    assert info["bytes_per_vector"] > 0
    assert info["bytes_per_vector"] < flat.describe()["bytes_per_vector"] or kind == "hnsw"


def test_k_edges(flat: DenseIndex) -> None:
    assert len(flat.search("music", k=1000)) == len(flat)
    assert flat.batch_search([], k=3) == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        flat.search("music", k=0)


def test_describe(flat: DenseIndex) -> None:
    info = flat.describe()
    assert info | {"index_file_bytes": 0} == info | {
        "kind": "dense", "passages": 150, "faiss": "flat", "bytes_per_vector": 1536.0, "encoder": "minilm",
        "dim": 384, "pooling": "mean", "index_file_bytes": 0,
    }  # fmt: skip


def test_unknown_faiss_kind(store: PassageStore, encoder: Encoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown FAISS index kind"):
        DenseIndex.build(store, encoder, tmp_path, kind="lsh", progress=False)


# --- resumable encoding -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_store(passages: list[Passage], tmp_path_factory: pytest.TempPathFactory) -> PassageStore:
    path = tmp_path_factory.mktemp("small") / "passages.arrow"
    write_store(passages[:40], path)
    return PassageStore.open(path)


def test_restart_reencodes_only_missing_shards(small_store: PassageStore, encoder: Encoder, tmp_path: Path) -> None:
    shards = encode_store(small_store, encoder, tmp_path, chunk_rows=16, progress=False)
    assert len(shards) == 3  # 16 + 16 + 8
    before = {shard: (shard.stat().st_mtime_ns, np.load(shard)) for shard in shards}
    shards[1].unlink()
    again = encode_store(small_store, encoder, tmp_path, chunk_rows=16, progress=False)
    assert again == shards
    assert shards[0].stat().st_mtime_ns == before[shards[0]][0]
    assert shards[2].stat().st_mtime_ns == before[shards[2]][0]
    np.testing.assert_allclose(np.load(shards[1]), before[shards[1]][1], atol=1e-5)
    assert not list(tmp_path.rglob("*.partial.npy"))


def test_changed_chunking_discards_old_shards(small_store: PassageStore, encoder: Encoder, tmp_path: Path) -> None:
    encode_store(small_store, encoder, tmp_path, chunk_rows=16, progress=False)
    shards = encode_store(small_store, encoder, tmp_path, chunk_rows=30, progress=False)
    assert sorted(tmp_path.rglob("shard_*.npy")) == shards
    assert [np.load(shard).shape[0] for shard in shards] == [30, 10]
