"""Tests for retriever_server.server over real HTTP: wire format, limits, auth, failures, fuzzing, batching."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from support import CountingBM25

from retriever_server.base import SearchHit
from retriever_server.bm25 import BM25Index
from retriever_server.server import ServerThread, create_app

from .conftest import TEST_TOKEN


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/retrieve", timeout=30, **kwargs)


def as_wire(hits: list[SearchHit], with_score: bool = True) -> list[dict[str, Any]]:
    """What the server must send for ``hits``: Search-R1's document shape plus title and text."""
    wire = []
    for hit in hits:
        document = {"id": hit.id, "contents": hit.contents, "title": hit.title, "text": hit.text}
        wire.append({"document": document, "score": hit.score} if with_score else {"document": document})
    return wire


def assert_serving(url: str) -> None:
    response = post(url, json={"queries": ["Uranus"], "topk": 1})
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------- wire format


def test_search_r1_request_and_response_shape(server_url: str, wiki_index: BM25Index) -> None:
    # exactly what Search-R1's trainer sends (requests.post(url, json=payload)) and how it reads the answer
    queries = ["exploration of Uranus", "The Sound of Music film", "space exploration lander"]
    payload = {"queries": queries, "topk": 3, "return_scores": True}
    result = post(server_url, json=payload).json()["result"]
    assert len(result) == len(queries)
    for hits, expected in zip(result, wiki_index.batch_search(queries, 3), strict=True):
        assert len(hits) == 3
        for hit in hits:
            assert set(hit) == {"document", "score"}
            assert isinstance(hit["score"], float)
            title, _, text = hit["document"]["contents"].partition("\n")
            assert title == f'"{hit["document"]["title"]}"'
            assert text == hit["document"]["text"]
        assert hits == as_wire(expected)


def test_return_scores_false_and_default_leave_scores_out(server_url: str, wiki_index: BM25Index) -> None:
    expected = as_wire(wiki_index.search("Voyager 2 spacecraft", 2), with_score=False)
    for payload in (
        {"queries": ["Voyager 2 spacecraft"], "topk": 2, "return_scores": False},
        {"queries": ["Voyager 2 spacecraft"], "topk": 2},
    ):  # Search-R1's default is False
        assert post(server_url, json=payload).json() == {"result": [expected]}


def test_topk_null_uses_default_topk(server_url: str) -> None:
    result = post(server_url, json={"queries": ["music film"], "topk": None, "return_scores": True}).json()["result"]
    assert len(result[0]) == 3


@pytest.mark.parametrize("k", [1, 5, 20])
def test_results_equal_direct_batch_search(
    server_url: str, wiki_index: BM25Index, wiki_queries: list[str], k: int
) -> None:
    queries = [*wiki_queries[:15], "zzzqqq nonexistentword"]  # one with no hits at all → an empty list
    result = post(server_url, json={"queries": queries, "topk": k, "return_scores": True}).json()["result"]
    assert result == [as_wire(hits) for hits in wiki_index.batch_search(queries, k)]
    assert result[-1] == []


def test_health_info_and_openapi_limits(server_url: str) -> None:
    assert httpx.get(f"{server_url}/health").json() == {"status": "ok", "passages": 400}
    info = httpx.get(f"{server_url}/info").json()
    assert info["retriever"]["kind"] == "bm25"
    assert info["limits"]["max_queries"] == 16
    assert info["stats"]["requests"] >= 0
    schema = httpx.get(f"{server_url}/openapi.json").json()["components"]["schemas"]["RetrieveRequest"]
    queries = schema["properties"]["queries"]
    assert (queries["minItems"], queries["maxItems"]) == (1, 16)
    assert queries["items"]["maxLength"] == 300
    assert {"type": "integer", "minimum": 1, "maximum": 20} in schema["properties"]["topk"]["anyOf"]


# ---------------------------------------------------------------------------------------------- bad input

BAD_JSON_BODIES = {
    "no queries key": ({"topk": 3}, 422, "queries"),
    "empty queries": ({"queries": []}, 422, "at least 1"),
    "too many queries": ({"queries": ["a b"] * 17}, 422, "at most 16"),
    "blank query": ({"queries": ["ok", "  \t "]}, 422, "non-blank"),
    "empty query": ({"queries": [""]}, 422, "queries.0"),
    "over-long query": ({"queries": ["x" * 301]}, 422, "at most 300 characters"),
    "topk zero": ({"queries": ["a"], "topk": 0}, 422, "topk"),
    "topk too big": ({"queries": ["a"], "topk": 21}, 422, "topk"),
    "topk as string": ({"queries": ["a"], "topk": "3"}, 422, "topk"),
    "topk as float": ({"queries": ["a"], "topk": 2.5}, 422, "topk"),
    "topk as bool": ({"queries": ["a"], "topk": True}, 422, "topk"),
    "queries a string": ({"queries": "who wrote it"}, 422, "valid list"),
    "query a number": ({"queries": [42]}, 422, "queries.0"),
    "return_scores a string": ({"queries": ["a"], "return_scores": "yes"}, 422, "return_scores"),
    "body a list": (["a", "b"], 422, "body"),
}


@pytest.mark.parametrize("case", BAD_JSON_BODIES.values(), ids=BAD_JSON_BODIES.keys())
def test_bad_json_bodies_get_4xx_with_message(server_url: str, case: tuple[Any, int, str]) -> None:
    body, status, fragment = case
    response = post(server_url, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert_serving(server_url)


BAD_RAW_BODIES = {
    "not JSON": (b"queries=a", {"content-type": "application/json"}, 400),
    "truncated JSON": (b'{"queries": ["a"', {"content-type": "application/json"}, 400),
    "invalid UTF-8": (b"\xff\xfe\x00", {"content-type": "application/json"}, 400),
    "deeply nested": (b"[" * 15_000, {"content-type": "application/json"}, 400),
    "form content type": (b'{"queries": ["a"]}', {"content-type": "application/x-www-form-urlencoded"}, 415),
    "no body": (b"", {}, 415),
    "JSON null": (b"null", {"content-type": "application/json"}, 422),
}


@pytest.mark.parametrize("case", BAD_RAW_BODIES.values(), ids=BAD_RAW_BODIES.keys())
def test_malformed_bodies_get_4xx(server_url: str, case: tuple[bytes, dict[str, str], int]) -> None:
    content, headers, status = case
    response = post(server_url, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert_serving(server_url)


def test_oversized_body_by_content_length_and_by_actual_size(server_url: str) -> None:
    big = b'{"queries": ["' + b"a" * 30_000 + b'"]}'
    declared = post(server_url, content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert "20000" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # a generator body is sent chunked: no Content-Length to trust
        yield b'{"queries": ["'
        for _ in range(30):
            yield b"a" * 1000
        yield b'"]}'

    streamed = post(server_url, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert_serving(server_url)


def test_unknown_paths_and_methods_get_json_errors(server_url: str) -> None:
    assert httpx.get(f"{server_url}/nope").json() == {"error": "Not Found"}
    assert httpx.get(f"{server_url}/retrieve").status_code == 405


# ---------------------------------------------------------------------------------------------- auth


def test_bearer_token(token_server_url: str) -> None:
    payload = {"queries": ["Uranus"], "topk": 1}
    assert post(token_server_url, json=payload).status_code == 401
    wrong = post(token_server_url, json=payload, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "missing or wrong bearer token"
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{token_server_url}/info").status_code == 401
    ok = post(token_server_url, json=payload, headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert ok.status_code == 200
    assert httpx.get(f"{token_server_url}/health").status_code == 200  # liveness probes carry no secrets


# ---------------------------------------------------------------------------------------------- failures


class FlakyBM25(BM25Index):
    """A real index that raises on the query "explode" (a stand-in for a crashed GPU encoder, a lost shard)."""

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
        if "explode" in queries:
            raise RuntimeError("index shard went away")
        return super().batch_search(queries, k, threads)


def test_retriever_exception_gives_503_and_server_keeps_serving(wiki_index: BM25Index) -> None:
    flaky = FlakyBM25(wiki_index.passages, wiki_index._retriever)
    with ServerThread(create_app(flaky)) as server:
        failed = post(server.url, json={"queries": ["explode"]})
        assert failed.status_code == 503
        assert "index shard went away" in failed.json()["error"]
        assert_serving(server.url)


# ---------------------------------------------------------------------------------------------- fuzzing


def test_schemathesis_finds_no_server_errors(server_url: str) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server_url}/openapi.json")
    operations = [schema["/retrieve"]["POST"], schema["/health"]["GET"], schema["/info"]["GET"]]
    strategies = [op.as_strategy(mode) for op in operations for mode in GenerationMode]
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def check(case: Any) -> None:
        response = case.call(base_url=server_url, timeout=30)
        assert response.status_code < 500, (case.body, response.text)
        assert "error" in response.json() or response.status_code == 200

    check()
    assert_serving(server_url)


# ---------------------------------------------------------------------------------------------- batching


@pytest.mark.asyncio
async def test_concurrent_clients_are_coalesced_and_answered_correctly(
    server_url: str, wiki_index: CountingBM25, wiki_queries: list[str]
) -> None:
    clients = 64
    requests = [(wiki_queries[(3 * i) % len(wiki_queries) :][:3], 3 if i % 2 else 5) for i in range(clients)]
    calls_before = wiki_index.calls
    async with httpx.AsyncClient(base_url=server_url, timeout=60, limits=httpx.Limits(max_connections=100)) as http:
        responses = await asyncio.gather(
            *(http.post("/retrieve", json={"queries": q, "topk": k, "return_scores": True}) for q, k in requests)
        )
    calls = wiki_index.calls - calls_before
    for (queries, k), response in zip(requests, responses, strict=True):
        assert response.json()["result"] == [as_wire(hits) for hits in wiki_index.batch_search(queries, k)]
    assert calls < clients, f"{calls} batch_search calls for {clients} concurrent requests: nothing coalesced"


def test_no_batching_when_max_batch_queries_is_1(wiki_index: BM25Index) -> None:
    counting = CountingBM25(wiki_index.passages, wiki_index._retriever)
    with ServerThread(create_app(counting, max_batch_queries=1, batch_window_ms=0)) as server:

        async def burst() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                await asyncio.gather(*(http.post("/retrieve", json={"queries": ["Uranus", "Music"]}) for _ in range(8)))

        asyncio.run(burst())
        assert counting.calls == 8
        stats = httpx.get(f"{server.url}/info").json()["stats"]
        assert (stats["requests"], stats["queries"], stats["batches"]) == (8, 16, 8)


def test_nan_score_from_retriever_is_503_not_500(wiki_index: BM25Index) -> None:
    class NaNBM25(BM25Index):
        def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
            return [
                [SearchHit(h.id, h.title, h.text, math.nan) for h in hits]
                for hits in super().batch_search(queries, k, threads)
            ]

    with ServerThread(create_app(NaNBM25(wiki_index.passages, wiki_index._retriever))) as server:
        assert post(server.url, json={"queries": ["Uranus"], "return_scores": True}).status_code == 503
        assert post(server.url, json={"queries": ["Uranus"], "return_scores": False}).status_code == 200
