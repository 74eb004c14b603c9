"""Tests for retriever_server.client against real servers: ours over BM25, and tiny real FastAPI apps that
fail on purpose (503 then recovery, 4xx) or speak Search-R1's plain document shape."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from support import free_port

from retriever_server.bm25 import BM25Index
from retriever_server.client import (
    AsyncRetrieverClient,
    RetrieverClient,
    RetrieverRequestError,
    RetrieverUnavailableError,
)
from retriever_server.server import ServerThread, create_app

from .conftest import TEST_TOKEN


def without_scores(hits: list[list[Any]]) -> list[list[tuple[str, str, str]]]:
    return [[(hit.id, hit.title, hit.text) for hit in row] for row in hits]


@pytest.mark.asyncio
async def test_async_retrieve_equals_direct_search(
    server_url: str, wiki_index: BM25Index, wiki_queries: list[str]
) -> None:
    queries = wiki_queries[:5]
    async with AsyncRetrieverClient(server_url) as client:
        assert await client.retrieve(queries, 4) == wiki_index.batch_search(queries, 4)
        assert await client.retrieve([], 4) == []
        no_scores = await client.retrieve(queries, 4, return_scores=False)
        assert all(math.isnan(hit.score) for row in no_scores for hit in row)
        assert without_scores(no_scores) == without_scores(wiki_index.batch_search(queries, 4))
        assert (await client.health())["passages"] == len(wiki_index)


def test_sync_client_same_methods(server_url: str, wiki_index: BM25Index) -> None:
    with RetrieverClient(server_url, timeout=30) as client:
        assert client.retrieve(["Exploration of Uranus"]) == [wiki_index.search("Exploration of Uranus", 3)]
        assert client.health() == {"status": "ok", "passages": len(wiki_index)}
        assert client.info()["limits"]["max_queries"] == 16
        with pytest.raises(RetrieverRequestError, match="at most 300 characters") as raised:
            client.retrieve(["x" * 301])
        assert raised.value.status == 422


def test_token(token_server_url: str) -> None:
    with RetrieverClient(token_server_url, token=TEST_TOKEN) as client:
        assert len(client.retrieve(["Uranus"], 2)[0]) == 2
    with RetrieverClient(token_server_url, token="wrong") as client, pytest.raises(RetrieverRequestError) as raised:
        client.retrieve(["Uranus"])
    assert raised.value.status == 401


def test_splits_requests_above_the_servers_limit(
    server_url: str, wiki_index: BM25Index, wiki_queries: list[str]
) -> None:
    queries = wiki_queries[:40]  # the server accepts 16 per request
    before = httpx.get(f"{server_url}/info").json()["stats"]["requests"]
    with RetrieverClient(server_url) as client:  # limit learned from /info
        assert client.retrieve(queries, 2) == wiki_index.batch_search(queries, 2)
    assert httpx.get(f"{server_url}/info").json()["stats"]["requests"] - before == 3
    with RetrieverClient(server_url, max_queries_per_request=7) as client:  # limit given
        assert client.retrieve(queries[:15], 2) == wiki_index.batch_search(queries[:15], 2)
    assert httpx.get(f"{server_url}/info").json()["stats"]["requests"] - before == 3 + 3


def test_no_server_raises_unavailable_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with (
        RetrieverClient(url, retries=2, backoff=0.01, max_queries_per_request=8) as client,
        pytest.raises(RetrieverUnavailableError) as raised,
    ):
        client.retrieve(["anything"])
    assert time.monotonic() - started < 5
    assert raised.value.attempts == 3
    assert url in str(raised.value)
    assert "ConnectError" in str(raised.value)


# ---------------------------------------------------------------------------------------------- flaky server


def flaky_app(failures: int, status: int = 503) -> FastAPI:
    """Answers ``status`` to the first ``failures`` calls, then Search-R1's shape (id and contents only)."""
    app = FastAPI()
    app.state.calls = 0

    @app.post("/retrieve")
    async def retrieve(body: dict[str, Any]) -> JSONResponse:
        app.state.calls += 1
        if app.state.calls <= failures:
            return JSONResponse({"error": f"warming up (call {app.state.calls})"}, status_code=status)
        document = {"id": "7", "contents": '"Blue River"\nThe Blue River flows past Lakeside.'}
        return JSONResponse({"result": [[{"document": document, "score": 1.5}] for _ in body["queries"]]})

    return app


@pytest.fixture
def flaky_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FastAPI]]:
    app = flaky_app(*request.param)
    with ServerThread(app) as server:
        yield server.url, app


@pytest.mark.parametrize("flaky_server", [(2,)], indirect=True)
def test_retries_503_then_recovers(flaky_server: tuple[str, FastAPI]) -> None:
    url, app = flaky_server
    # no /info on this server (like Search-R1's): the client sends requests whole
    with RetrieverClient(url, retries=3, backoff=0.01) as client:
        [[hit], [_]] = client.retrieve(["river", "lake"], 1)
    assert (hit.id, hit.title, hit.text, hit.score) == ("7", "Blue River", "The Blue River flows past Lakeside.", 1.5)
    assert app.state.calls == 3


@pytest.mark.parametrize("flaky_server", [(10,)], indirect=True)
def test_gives_up_after_retries_with_last_error(flaky_server: tuple[str, FastAPI]) -> None:
    url, app = flaky_server
    with (
        RetrieverClient(url, retries=2, backoff=0.01, max_queries_per_request=4) as client,
        pytest.raises(RetrieverUnavailableError, match=r"HTTP 503: warming up \(call 3\)"),
    ):
        client.retrieve(["river"])
    assert app.state.calls == 3


@pytest.mark.parametrize("flaky_server", [(10, 422)], indirect=True)
def test_4xx_is_not_retried(flaky_server: tuple[str, FastAPI]) -> None:
    url, app = flaky_server
    with (
        RetrieverClient(url, retries=3, backoff=0.01, max_queries_per_request=4) as client,
        pytest.raises(RetrieverRequestError, match="warming up"),
    ):
        client.retrieve(["river"])
    assert app.state.calls == 1


def test_live_server_against_real_uvicorn_app_without_scores(wiki_index: BM25Index) -> None:
    with ServerThread(create_app(wiki_index, max_queries=2)) as server, RetrieverClient(server.url) as client:
        rows = client.retrieve(["Uranus", "Voyager", "music", "film", "space"], 1, return_scores=False)
    assert without_scores(rows) == without_scores(
        wiki_index.batch_search(["Uranus", "Voyager", "music", "film", "space"], 1)
    )
