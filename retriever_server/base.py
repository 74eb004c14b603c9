"""The interface every retriever here offers, and the hit type it returns.

A retriever answers ``batch_search(queries, k)`` with one list of ``SearchHit`` per query, in query order,
best first; ``search(query, k)`` is the one-query form. ``describe()`` returns JSON-able metadata (kind,
passage count, encoder, …) that the server's info endpoint shows. BM25, dense, hybrid and re-ranked
retrievers all implement it, so the server and the agent environment never care which one they have.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SearchHit:
    """A retrieved passage and its score (higher is better; scales differ between retriever kinds)."""

    id: str
    title: str
    text: str
    score: float

    @property
    def contents(self) -> str:
        """The wiki-18 form: the quoted title on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'


@runtime_checkable
class Retriever(Protocol):
    def __len__(self) -> int: ...

    def search(self, query: str, k: int = 3) -> list[SearchHit]: ...

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]: ...

    def describe(self) -> dict[str, Any]: ...


class BatchRetriever(ABC):
    """What every retriever here shares: ``search`` is a batch of one, and ``k`` is checked in one place.

    Subclasses implement ``_batch_search`` (called with a non-empty list and ``k >= 1``), ``__len__`` and
    ``describe``.
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    @abstractmethod
    def _batch_search(self, queries: list[str], k: int, threads: int) -> list[list[SearchHit]]: ...

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        return self.batch_search([query], k)[0]

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
        """Top-k hits per query, in query order, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        return self._batch_search(list(queries), k, threads)
