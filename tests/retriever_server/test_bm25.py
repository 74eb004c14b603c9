"""Tests for retriever_server.bm25: ranking, batching, edge cases, persistence and a real-data check.

Indexes are small and shared per module: the first numba retrieval in a process costs a few seconds of JIT.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from retriever_server.base import SearchHit
from retriever_server.bm25 import BM25Index
from retriever_server.corpus import Passage, load_passages

PASSAGES = [
    Passage("acme", "Acme Corporation", "Acme Corporation was established in 1950 by John Smith in Springfield."),
    Passage("globex", "Globex", "The founding of Globex took place in Berlin, where its first office opened."),
    Passage("river", "Blue River", "The Blue River flows past the city of Lakeside and into the northern sea."),
    Passage("cat", "Domestic cat", "Cats are small carnivorous mammals that many households keep as pets."),
    Passage("piano", "Piano", "A piano is a keyboard instrument whose strings are struck by hammers."),
    Passage("filler", "Filler", "It is one of the ones that are in there, and it was what it is."),
    Passage("moon", "Moon", "The Moon orbits the Earth and is its only natural satellite."),
    Passage("lakeside", "Lakeside", "Lakeside is a city on the Blue River with a large harbour and a museum."),
]

QUERIES = {
    "who established Acme Corporation in Springfield": "acme",
    "cats kept as pets": "cat",
    "keyboard instrument with hammers": "piano",
    "natural satellite of the Earth": "moon",
    "the harbour and museum of Lakeside": "lakeside",
}


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index.build(PASSAGES)


@pytest.fixture(scope="module")
def saved_dir(index: BM25Index, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bm25") / "index"
    index.save(directory)
    return directory


@pytest.fixture(scope="module")
def reloaded(saved_dir: Path) -> BM25Index:
    return BM25Index.load(saved_dir)


def ids(hits: list[SearchHit]) -> list[str]:
    return [hit.id for hit in hits]


# --- ranking ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), QUERIES.items())
def test_right_passage_ranks_first(index: BM25Index, query: str, expected: str) -> None:
    hits = index.search(query, k=3)
    assert hits
    assert hits[0].id == expected


def test_stemming_matches_inflected_forms(index: BM25Index) -> None:
    # "founded" and "founding" share the stem "found"; only the Globex passage has either.
    assert ids(index.search("founded", k=5)) == ["globex"]
    assert ids(index.search("FOUNDED", k=5)) == ["globex"]
    assert ids(index.search("flowing rivers", k=1)) == ["river"]


def test_stop_words_are_ignored(index: BM25Index) -> None:
    # The filler passage is nearly all stop-words ("it is ... that are in there, and it was"): a query padded
    # with the same stop-words must reach only the passage that has its one content word.
    assert ids(index.search("the cats that are in there, and it is", k=len(PASSAGES))) == ["cat"]


def test_hit_fields(index: BM25Index) -> None:
    hit = index.search("Globex Berlin", k=1)[0]
    passage = next(p for p in PASSAGES if p.id == "globex")
    assert (hit.id, hit.title, hit.text) == (passage.id, passage.title, passage.text)
    assert hit.contents == passage.contents
    assert isinstance(hit.score, float)
    assert hit.score > 0


def test_len(index: BM25Index) -> None:
    assert len(index) == len(PASSAGES)


# --- batch_search -----------------------------------------------------------------------------------------------


def test_batch_search_one_list_per_query_in_order(index: BM25Index) -> None:
    queries = list(QUERIES)
    results = index.batch_search(queries, k=2)
    assert len(results) == len(queries)
    for query, hits in zip(queries, results, strict=True):
        assert 1 <= len(hits) <= 2
        assert hits[0].id == QUERIES[query]
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(score > 0 for score in scores)
    # reversed order gives reversed results
    assert [ids(hits) for hits in index.batch_search(queries[::-1], k=2)] == [ids(hits) for hits in results][::-1]


def test_batch_search_agrees_with_search(index: BM25Index) -> None:
    queries = [*QUERIES, "Blue River city"]
    batched = index.batch_search(queries, k=4)
    assert batched == [index.search(query, k=4) for query in queries]


def test_empty_query_list(index: BM25Index) -> None:
    assert index.batch_search([], k=3) == []


def test_k_larger_than_corpus(index: BM25Index) -> None:
    hits = index.search("Blue River Lakeside city", k=100)
    assert 2 <= len(hits) <= len(PASSAGES)
    assert len(set(ids(hits))) == len(hits)
    assert set(ids(hits[:2])) == {"river", "lakeside"}
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_k_limits_hits(index: BM25Index) -> None:
    assert len(index.search("the city of Lakeside on the Blue River", k=1)) == 1


def test_query_with_no_known_terms_returns_nothing(index: BM25Index) -> None:
    assert index.search("xylophone quasar", k=3) == []
    assert index.batch_search(["cats", "xylophone quasar"], k=3)[1] == []


@pytest.mark.parametrize("query", ["", "   ", "the of and is"])
def test_query_without_terms_after_another_returns_nothing(index: BM25Index, query: str) -> None:
    results = index.batch_search(["cats", query], k=3)
    assert ids(results[0])[:1] == ["cat"]
    assert results[1] == []


@pytest.mark.parametrize("query", ["", "   ", "the of and is"])
def test_query_without_terms_returns_nothing(index: BM25Index, query: str) -> None:
    assert index.search(query, k=3) == []
    # first in a batch too (bm25s itself rejects such a batch)
    results = index.batch_search([query, "cats"], k=3)
    assert results[0] == []
    assert ids(results[1])[:1] == ["cat"]


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_raises(index: BM25Index, k: int) -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search("cats", k=k)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.batch_search(["cats"], k=k)


def test_empty_corpus_raises() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build([])


# --- persistence ------------------------------------------------------------------------------------------------


def test_save_writes_expected_files(saved_dir: Path, index: BM25Index) -> None:
    assert (saved_dir / BM25Index.SETTINGS_FILE).is_file()
    assert (saved_dir / "bm25s").is_dir()
    assert load_passages(saved_dir / BM25Index.CORPUS_FILE) == index.passages


def test_save_load_gives_identical_results(index: BM25Index, reloaded: BM25Index) -> None:
    assert reloaded.passages == index.passages
    assert reloaded.language == index.language
    assert len(reloaded) == len(index)
    queries = [*QUERIES, "founded", "xylophone", "Blue River Lakeside city"]
    assert reloaded.batch_search(queries, k=5) == index.batch_search(queries, k=5)
    assert reloaded.search("keyboard", k=100) == index.search("keyboard", k=100)


def test_load_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BM25Index.load(tmp_path / "no-index-here")


# --- real data --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wiki_passages(wiki18_passages: tuple[Passage, ...]) -> list[Passage]:
    return list(wiki18_passages[:2000])


@pytest.fixture(scope="module")
def wiki_index(wiki_passages: list[Passage]) -> BM25Index:
    return BM25Index.build(wiki_passages)


def test_real_passages_are_found_by_title_and_opening_words(
    wiki_passages: list[Passage], wiki_index: BM25Index
) -> None:
    sample = random.Random(0).sample(wiki_passages, 50)
    # Title plus the passage's first ten words (wiki-18 article openings repeat the title: skip it). Misses are
    # other chunks of the same article, which share the title; 48 of these 50 come first today.
    queries = [f"{p.title} {' '.join(p.text.removeprefix(p.title).split()[:10])}" for p in sample]
    results = wiki_index.batch_search(queries, k=3)
    assert len(results) == len(sample)
    at_rank_one = sum(bool(hits) and hits[0].id == passage.id for passage, hits in zip(sample, results, strict=True))
    assert at_rank_one >= 45, f"only {at_rank_one}/50 passages retrieved at rank 1 by their own title and opening"
    for hits in results:
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
