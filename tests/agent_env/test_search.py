"""Tests for agent_env.search: both backends return what the index returns, and concurrent searches of many
episodes are coalesced into few retriever calls (counted on a real BM25 index, in process and behind a real
server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from support import CountingBM25, free_port

from agent_env.search import HttpSearch, LocalSearch
from data_prep.synthetic import World
from retriever_server.base import SearchHit
from retriever_server.client import RetrieverUnavailableError
from retriever_server.server import ServerThread, create_app


@pytest.fixture(scope="module")
def queries(tiny_world: World) -> list[str]:
    """Distinct question-like queries with matches in the world."""
    found = list(dict.fromkeys(example.question for example in tiny_world.questions["train"][:60]))
    assert len(found) == 60
    return found


@pytest.fixture(scope="module")
def small_request_server(world_index: CountingBM25) -> Iterator[str]:
    """A server accepting at most 4 queries per request, so a large batch must be split by the client."""
    with ServerThread(create_app(world_index, max_queries=4)) as server:
        yield server.url


def server_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/info", timeout=10).json()["stats"])


async def search_all(backend: LocalSearch | HttpSearch, requests: Sequence[tuple[list[str], int]]) -> list[Any]:
    """All requests at once from separate coroutines, as concurrent episodes send them."""
    try:
        return list(await asyncio.gather(*(backend.search(queries, topk) for queries, topk in requests)))
    finally:
        await backend.aclose()


def test_local_search_equals_direct_index(world_index: CountingBM25, queries: list[str]) -> None:
    hits = asyncio.run(search_all(LocalSearch(world_index), [(queries[:3], 4)]))
    assert hits == [world_index.batch_search(queries[:3], 4)]
    assert all(len(row) == 4 for row in hits[0])


def test_http_search_equals_direct_index(world_index: CountingBM25, world_server: str, queries: list[str]) -> None:
    hits = asyncio.run(search_all(HttpSearch.from_url(world_server), [(queries[:3], 4)]))
    assert hits == [world_index.batch_search(queries[:3], 4)]


def test_concurrent_local_searches_share_one_index_call(world_index: CountingBM25, queries: list[str]) -> None:
    requests = [([query, f"{query} born"], 3) for query in queries]
    before = world_index.calls
    hits = asyncio.run(search_all(LocalSearch(world_index), requests))
    assert world_index.calls - before == 1
    for (variants, topk), answer in zip(requests, hits, strict=True):
        assert answer == world_index.batch_search(variants, topk)  # each episode gets its own variants' hits


def test_concurrent_http_searches_share_few_requests(
    world_index: CountingBM25, world_server: str, queries: list[str]
) -> None:
    requests = [([query, f"{query} born"], 3) for query in queries]
    before = server_stats(world_server)
    hits = asyncio.run(search_all(HttpSearch.from_url(world_server), requests))
    after = server_stats(world_server)
    assert after["requests"] - before["requests"] == 1
    assert after["queries"] - before["queries"] == 2 * len(requests)
    for (variants, topk), answer in zip(requests, hits, strict=True):
        assert answer == world_index.batch_search(variants, topk)


def test_http_batch_larger_than_server_limit_is_split_in_order(
    world_index: CountingBM25, small_request_server: str, queries: list[str]
) -> None:
    requests = [([query, f"{query} city", f"{query} year"], 2) for query in queries[:10]]
    before = server_stats(small_request_server)
    hits = asyncio.run(search_all(HttpSearch.from_url(small_request_server), requests))
    assert server_stats(small_request_server)["requests"] - before["requests"] == 8  # 30 queries, 4 per request
    for (variants, topk), answer in zip(requests, hits, strict=True):
        assert answer == world_index.batch_search(variants, topk)


@pytest.mark.parametrize("backend", ["local", "http"])
def test_mixed_topk_in_one_batch(
    world_index: CountingBM25, world_server: str, queries: list[str], backend: str
) -> None:
    requests = [([query], topk) for query, topk in zip(queries[:12], [1, 5, 2] * 4, strict=True)]
    search = LocalSearch(world_index) if backend == "local" else HttpSearch.from_url(world_server)
    before = world_index.calls
    hits = asyncio.run(search_all(search, requests))
    assert world_index.calls - before == 3  # one retriever call per distinct topk
    assert [len(answer[0]) for answer in hits] == [topk for _, topk in requests]
    for (variants, topk), answer in zip(requests, hits, strict=True):
        assert answer == world_index.batch_search(variants, topk)


@pytest.mark.parametrize("backend", ["local", "http"])
def test_per_variant_results_keep_query_order(
    world_index: CountingBM25, world_server: str, queries: list[str], backend: str
) -> None:
    variants = [queries[5], "the of a", queries[1], queries[5]]  # a query without terms, a repeated one
    search = LocalSearch(world_index) if backend == "local" else HttpSearch.from_url(world_server)
    [hits] = asyncio.run(search_all(search, [(variants, 3)]))
    assert hits == [world_index.search(query, 3) for query in variants]
    assert hits[1] == []
    assert hits[0] == hits[3]
    assert hits[0] != hits[2]


@pytest.mark.parametrize("backend", ["local", "http"])
def test_empty_query_list_needs_no_retriever_call(world_index: CountingBM25, world_server: str, backend: str) -> None:
    search = LocalSearch(world_index) if backend == "local" else HttpSearch.from_url(world_server)
    before = world_index.calls
    assert asyncio.run(search_all(search, [([], 3), ([], 1)])) == [[], []]
    assert world_index.calls == before


@pytest.mark.parametrize("topk", [0, -1])
def test_topk_below_one_is_rejected(world_index: CountingBM25, world_server: str, topk: int) -> None:
    for search in (LocalSearch(world_index), HttpSearch.from_url(world_server)):
        with pytest.raises(ValueError, match="topk must be >= 1"):
            asyncio.run(search_all(search, [(["Tamrail"], topk)]))


class FlakyIndex:
    """Fails its first batch, then answers like the wrapped index."""

    def __init__(self, index: CountingBM25) -> None:
        self.index = index
        self.failed = False

    def __len__(self) -> int:
        return len(self.index)

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        return self.batch_search([query], k)[0]

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
        if not self.failed:
            self.failed = True
            raise OSError("index file vanished")
        return self.index.batch_search(queries, k, threads)

    def describe(self) -> dict[str, Any]:
        return {"kind": "flaky"}


def test_failed_batch_reaches_every_waiter_and_the_next_batch_works(
    world_index: CountingBM25, queries: list[str]
) -> None:
    search = LocalSearch(FlakyIndex(world_index))

    async def scenario() -> list[Any]:
        first = await asyncio.gather(*(search.search([query], 2) for query in queries[:5]), return_exceptions=True)
        second = await search.search([queries[0]], 2)
        await search.aclose()
        return [first, second]

    first, second = asyncio.run(scenario())
    assert all(isinstance(error, OSError) for error in first)
    assert second == world_index.batch_search([queries[0]], 2)


def test_http_search_to_a_dead_server_raises_unavailable() -> None:
    search = HttpSearch.from_url(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01, timeout=2.0)
    with pytest.raises(RetrieverUnavailableError, match="after 2 attempt"):
        asyncio.run(search_all(search, [(["Tamrail"], 3)]))
