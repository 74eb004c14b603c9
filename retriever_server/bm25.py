"""In-process BM25 retrieval over a passage list, backed by bm25s.

``BM25Index.build(passages)`` indexes titles and texts (stemmed, English stop-words removed);
``search(query, k)`` and ``batch_search(queries, k)`` return ``SearchHit`` lists, best first.
Retrieval uses bm25s' numba backend: on large corpora it is two orders of magnitude faster than the
default numpy backend (docs/architecture.md); the first call in a process pays a few seconds of JIT compile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retriever_server.base import BatchRetriever, SearchHit
from retriever_server.corpus import Passage, load_passages, write_wiki18_jsonl


def _bm25s() -> Any:
    """The bm25s module, with its logger quieted: it sets itself to DEBUG on import, so a command's own output
    would be interleaved with its "Building index" lines wherever logging has a handler."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class BM25Index(BatchRetriever):
    """BM25 over an in-memory passage list."""

    CORPUS_FILE = "corpus.jsonl"
    SETTINGS_FILE = "bm25_settings.json"

    def __init__(self, passages: Sequence[Passage], retriever: object, *, language: str = "english") -> None:
        # A list is copied so later edits by the caller cannot desynchronise rows; other sequences (a
        # memory-mapped PassageStore) are kept as they are rather than pulled into memory.
        self.passages: Sequence[Passage] = list(passages) if isinstance(passages, list) else passages
        self._retriever = retriever
        self.language = language
        self._stemmer = _make_stemmer(language)

    @classmethod
    def build(
        cls, passages: Sequence[Passage], *, language: str = "english", k1: float = 1.5, b: float = 0.75
    ) -> BM25Index:
        """Index ``passages``; ``k1`` / ``b`` are BM25's (bm25s' defaults; Lucene/BEIR anchors use 0.9 / 0.4).
        bm25s scores at index time, so they are fixed here and saved with the index."""
        bm25s = _bm25s()

        if not passages:
            raise ValueError("cannot index an empty corpus")
        texts = [f"{passage.title}\n{passage.text}" for passage in passages]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=_make_stemmer(language), show_progress=False)
        retriever = bm25s.BM25(k1=k1, b=b, backend="numba")
        retriever.index(tokens, show_progress=False)
        return cls(passages, retriever, language=language)

    def __len__(self) -> int:
        return len(self.passages)

    def describe(self) -> dict[str, Any]:
        return {"kind": "bm25", "passages": len(self.passages), "language": self.language, "library": "bm25s"}

    def _batch_search(self, queries: list[str], k: int, threads: int) -> list[list[SearchHit]]:
        """Hits with no term overlap (score 0) are dropped, so a query may get fewer than k."""
        bm25s = _bm25s()

        query_tokens = bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self._stemmer, show_progress=False, return_ids=False
        )
        # bm25s rejects a batch whose first query has no terms left, so only queries with terms go in.
        with_terms = [position for position, tokens in enumerate(query_tokens) if tokens]
        results: list[list[SearchHit]] = [[] for _ in queries]
        if with_terms:
            rows, scores = self._retriever.retrieve(  # type: ignore[attr-defined]
                [query_tokens[position] for position in with_terms],
                k=min(k, len(self.passages)),
                show_progress=False,
                n_threads=threads,
            )
            for position, row, row_scores in zip(with_terms, rows, scores, strict=True):
                results[position] = self._hits(row, row_scores)
        return results

    def _hits(self, rows: Sequence[int], scores: Sequence[float]) -> list[SearchHit]:
        hits = []
        for row, score in zip(rows, scores, strict=True):
            if score <= 0.0:
                continue
            passage = self.passages[int(row)]
            hits.append(SearchHit(passage.id, passage.title, passage.text, float(score)))
        return hits

    def save(self, directory: str | Path, *, with_corpus: bool = True) -> None:
        """Save the index; ``with_corpus=False`` leaves out the passages (an index directory keeps its own store)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._retriever.save(str(directory / "bm25s"))  # type: ignore[attr-defined]
        if with_corpus:
            write_wiki18_jsonl(self.passages, directory / self.CORPUS_FILE)
        (directory / self.SETTINGS_FILE).write_text(json.dumps({"language": self.language}))

    @classmethod
    def load(cls, directory: str | Path, passages: Sequence[Passage] | None = None, *, mmap: bool = False) -> BM25Index:
        """Load a saved index, with its own corpus copy or with ``passages`` (the same passages, same order).

        ``mmap``: memory-map the score arrays instead of reading them in, so processes serving one index
        directory share one copy in the page cache (``serve-retriever --workers``); search speed is the same."""
        bm25s = _bm25s()

        directory = Path(directory)
        settings = json.loads((directory / cls.SETTINGS_FILE).read_text())
        retriever = bm25s.BM25.load(str(directory / "bm25s"), mmap=mmap)
        passages = load_passages(directory / cls.CORPUS_FILE) if passages is None else passages
        return cls(passages, retriever, language=settings["language"])


def _make_stemmer(language: str) -> object:
    import Stemmer

    return Stemmer.Stemmer(language)
