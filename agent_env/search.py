"""Search backends for episodes: one call per ``<search>`` action, batched across concurrent episodes.

An episode asks ``await backend.search(queries, topk)`` for all variants of one search at once and gets one hit
list per variant. Both backends put an :class:`~agent_env.batching.AsyncBatcher` in front of the retriever, so
the searches of every episode waiting at the same moment go out as one batch:

- :class:`HttpSearch`: a retriever server (``expandsearch serve-retriever`` or Search-R1's), through the async
  client with its retries; the server micro-batches further across clients.
- :class:`FailoverSearch`: several retriever servers (one per node, say): batches rotate over them, and a
  server that stays down after its client's retries passes the batch to the next one.
- :class:`LocalSearch`: an in-process index (``retriever_server.index_dir.load_index``), its ``batch_search``
  run in a worker thread so the event loop keeps generating for other episodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent_env.batching import AsyncBatcher
from retriever_server.base import Retriever, SearchHit
from retriever_server.client import AsyncRetrieverClient, RetrieverUnavailableError

HitLists = list[list[SearchHit]]


@runtime_checkable
class SearchBackend(Protocol):
    async def search(self, queries: Sequence[str], topk: int) -> HitLists:
        """One list of hits per query, in query order, best first."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class _SearchRequest:
    queries: tuple[str, ...]
    topk: int


class _BatchedSearch:
    """Flattens the queries of all waiting requests into one retriever call per distinct topk."""

    def __init__(self, retrieve: Callable[[list[str], int], Awaitable[HitLists]], max_batch_size: int) -> None:
        self._retrieve = retrieve
        self._batcher: AsyncBatcher[_SearchRequest, HitLists] = AsyncBatcher(
            self._run_batch, max_batch_size=max_batch_size
        )

    async def search(self, queries: Sequence[str], topk: int) -> HitLists:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if not queries:
            return []
        return await self._batcher.submit(_SearchRequest(tuple(queries), topk))

    async def _run_batch(self, requests: list[_SearchRequest]) -> list[HitLists]:
        answers: list[HitLists] = [[] for _ in requests]
        for topk in sorted({request.topk for request in requests}):
            members = [index for index, request in enumerate(requests) if request.topk == topk]
            flat = [query for index in members for query in requests[index].queries]
            hits = await self._retrieve(flat, topk)
            start = 0
            for index in members:
                count = len(requests[index].queries)
                answers[index] = hits[start : start + count]
                start += count
        return answers

    async def aclose(self) -> None:
        await self._batcher.aclose()


class HttpSearch(_BatchedSearch):
    """Search through a retriever server's ``POST /retrieve`` (retries and errors: ``AsyncRetrieverClient``)."""

    def __init__(self, client: AsyncRetrieverClient, *, max_batch_size: int = 256) -> None:
        self.client = client
        super().__init__(self._call_server, max_batch_size)

    @classmethod
    def from_url(cls, url: str, **client_options: object) -> HttpSearch:
        return cls(AsyncRetrieverClient(url, **client_options))  # type: ignore[arg-type]

    async def _call_server(self, queries: list[str], topk: int) -> HitLists:
        return await self.client.retrieve(queries, topk=topk, return_scores=True)

    async def aclose(self) -> None:
        await super().aclose()
        await self.client.aclose()


class FailoverSearch(_BatchedSearch):
    """Search through several retriever servers: each batch starts at the next server in turn (spreading load)
    and moves on to the following one when a server is unavailable after its client's retries; only when all
    are down does the batch fail (and the episodes are told). ``failovers`` counts the batches passed on."""

    def __init__(self, clients: Sequence[AsyncRetrieverClient], *, max_batch_size: int = 256) -> None:
        if not clients:
            raise ValueError("FailoverSearch needs at least one retriever client")
        self.clients = list(clients)
        self.failovers = 0
        self._next = 0
        super().__init__(self._call_servers, max_batch_size)

    @classmethod
    def from_urls(cls, urls: Sequence[str], **client_options: object) -> FailoverSearch:
        return cls([AsyncRetrieverClient(url, **client_options) for url in urls])  # type: ignore[arg-type]

    async def _call_servers(self, queries: list[str], topk: int) -> HitLists:
        start, self._next = self._next, (self._next + 1) % len(self.clients)
        error: RetrieverUnavailableError | None = None
        for offset in range(len(self.clients)):
            client = self.clients[(start + offset) % len(self.clients)]
            try:
                return await client.retrieve(queries, topk=topk, return_scores=True)
            except RetrieverUnavailableError as unavailable:
                error = unavailable
                self.failovers += offset + 1 < len(self.clients)
        assert error is not None
        raise error

    async def aclose(self) -> None:
        await super().aclose()
        for client in self.clients:
            await client.aclose()


class LocalSearch(_BatchedSearch):
    """Search an in-process retriever; each batch runs in a worker thread."""

    def __init__(self, retriever: Retriever, *, max_batch_size: int = 256, threads: int = 1) -> None:
        self.retriever = retriever
        self.threads = threads
        super().__init__(self._call_index, max_batch_size)

    async def _call_index(self, queries: list[str], topk: int) -> HitLists:
        return await asyncio.to_thread(self.retriever.batch_search, queries, topk, self.threads)
