"""Hybrid retrieval: reciprocal-rank fusion of a lexical and a dense retriever, and an optional re-ranker.

BM25 finds rare names and exact strings; dense retrieval finds paraphrases. Their scores live on unrelated
scales, so ``HybridRetriever`` fuses ranks, not scores: reciprocal-rank fusion (Cormack et al., 2009) gives a
passage ``sum(1 / (rrf_k + rank))`` over the lists it appears in (rank from 1, ``rrf_k`` = 60 as in the paper).
Each side retrieves a deeper list than asked for, so a passage ranked 12th by one side can still win.

``Reranker`` wraps a cross-encoder (a transformers sequence-classification model that reads query and
passage together); when given, it re-scores the fused top-N and the final order is its order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retriever_server.base import BatchRetriever, Retriever, SearchHit

RRF_K = 60
DEFAULT_DEPTH = 20


def reciprocal_rank_fusion(rankings: Sequence[Sequence[SearchHit]], rrf_k: int = RRF_K) -> list[SearchHit]:
    """Fuse ranked hit lists into one, best first; each hit's score becomes its fused RRF score."""
    fused: dict[str, float] = {}
    first_seen: dict[str, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + 1.0 / (rrf_k + rank)
            first_seen.setdefault(hit.id, hit)
    # sorted() is stable: equal fused scores keep first-seen order, so results are deterministic.
    order = sorted(fused, key=lambda passage_id: -fused[passage_id])
    return [_rescored(first_seen[passage_id], fused[passage_id]) for passage_id in order]


def _rescored(hit: SearchHit, score: float) -> SearchHit:
    return SearchHit(hit.id, hit.title, hit.text, score)


class Reranker:
    """A cross-encoder from a local directory; higher score = more relevant."""

    def __init__(self, path: str | Path, *, device: str | None = None, batch_size: int = 32, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"re-ranker: no local model directory {self.path!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device).eval()

    def score(self, query: str, hits: Sequence[SearchHit]) -> list[float]:
        """One relevance score per hit, for the (query, passage contents) pair."""
        scores: list[float] = []
        for start in range(0, len(hits), self.batch_size):
            scores.extend(self._score_batch(query, hits[start : start + self.batch_size]))
        return scores

    def _score_batch(self, query: str, hits: Sequence[SearchHit]) -> list[float]:
        import torch

        batch = self.tokenizer(
            [query] * len(hits),
            [hit.contents for hit in hits],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()
        # One-logit models (ms-marco cross-encoders, bge-reranker) give the score directly; two-label
        # classifiers give (irrelevant, relevant), and the relevant logit orders the same as its probability.
        return logits[:, -1].cpu().tolist()

    def rerank(self, query: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        """The hits re-ordered by cross-encoder score (which becomes their score), best first."""
        scored = zip(self.score(query, hits), hits, strict=True)
        return [_rescored(hit, score) for score, hit in sorted(scored, key=lambda pair: -pair[0])]

    def describe(self) -> dict[str, Any]:
        return {"reranker": self.path}


class HybridRetriever(BatchRetriever):
    """RRF of two retrievers (BM25 and dense, usually) over the same passages, optionally re-ranked."""

    def __init__(
        self,
        lexical: Retriever,
        dense: Retriever,
        *,
        rrf_k: int = RRF_K,
        depth: int = DEFAULT_DEPTH,
        reranker: Reranker | None = None,
        rerank_top_n: int = DEFAULT_DEPTH,
    ) -> None:
        if len(lexical) != len(dense):
            raise ValueError(f"hybrid parts index different corpora: {len(lexical)} vs {len(dense)} passages")
        self.lexical = lexical
        self.dense = dense
        self.rrf_k = rrf_k
        self.depth = depth
        self.reranker = reranker
        self.rerank_top_n = rerank_top_n

    def __len__(self) -> int:
        return len(self.lexical)

    def _batch_search(self, queries: list[str], k: int, threads: int) -> list[list[SearchHit]]:
        depth = max(k, self.depth, self.rerank_top_n if self.reranker else 0)
        lexical = self.lexical.batch_search(queries, depth, threads)
        dense = self.dense.batch_search(queries, depth, threads)
        fused = [reciprocal_rank_fusion(pair, self.rrf_k) for pair in zip(lexical, dense, strict=True)]
        if self.reranker is None:
            return [hits[:k] for hits in fused]
        reranker = self.reranker
        return [
            reranker.rerank(query, hits[: max(k, self.rerank_top_n)])[:k]
            for query, hits in zip(queries, fused, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "hybrid",
            "passages": len(self),
            "fusion": "rrf",
            "rrf_k": self.rrf_k,
            "depth": self.depth,
            "lexical": self.lexical.describe(),
            "dense": self.dense.describe(),
            **(self.reranker.describe() | {"rerank_top_n": self.rerank_top_n} if self.reranker else {}),
        }
