"""The ``/retrieve`` fast path (``FastRetrieve``) answers byte for byte what the FastAPI route answers.

Two real servers over the same index on free ports: one with the fast path (the default), one with
``fast_path=False`` (every request through the FastAPI route, the reference). Each request goes to both; status,
content type and body must be equal, for good requests and for every kind of bad one (those the fast path hands
back to the route)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from retriever_server.bm25 import BM25Index
from retriever_server.server import ServerThread, create_app

from .conftest import TEST_TOKEN


@pytest.fixture(scope="module")
def pair(wiki_index: BM25Index) -> Iterator[tuple[str, str]]:
    with (
        ServerThread(create_app(wiki_index, token=TEST_TOKEN)) as fast,
        ServerThread(create_app(wiki_index, token=TEST_TOKEN, fast_path=False)) as reference,
    ):
        yield fast.url, reference.url


AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}

REQUESTS: list[tuple[str, dict[str, str], bytes]] = [
    ("one query", JSON, b'{"queries": ["exploration of Uranus"], "topk": 3, "return_scores": true}'),
    ("no scores", JSON, b'{"queries": ["The Sound of Music film", "lander"], "topk": 2}'),
    ("default topk", JSON, b'{"queries": ["space exploration"]}'),
    ("unicode", JSON, '{"queries": ["Zürich \u00e9t\u00e9 \u6771\u4eac"]}'.encode()),
    ("unknown field, ignored as by the route", JSON, b'{"queries": ["Uranus"], "bogus": 1}'),
    ("charset", {**AUTH, "Content-Type": "application/json; charset=utf-8"}, b'{"queries": ["Uranus"]}'),
    ("no token", {"Content-Type": "application/json"}, b'{"queries": ["Uranus"]}'),
    ("wrong token", {"Authorization": "Bearer nope", "Content-Type": "application/json"}, b'{"queries": ["x"]}'),
    ("not json", JSON, b'{"queries": ['),
    ("text/plain", {**AUTH, "Content-Type": "text/plain"}, b'{"queries": ["Uranus"]}'),
    ("empty queries", JSON, b'{"queries": []}'),
    ("topk too large", JSON, b'{"queries": ["Uranus"], "topk": 100000}'),
    ("not a list", JSON, b'{"queries": "Uranus"}'),
    ("nan", JSON, b'{"queries": ["Uranus"], "topk": NaN}'),
]


def send(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str | None, bytes]:
    response = httpx.post(f"{url}/retrieve", headers=headers, content=body, timeout=30)
    return response.status_code, response.headers.get("content-type"), response.content


@pytest.mark.parametrize(("headers", "body"), [(h, b) for _, h, b in REQUESTS], ids=[n for n, _, _ in REQUESTS])
def test_the_fast_path_answers_exactly_what_the_route_answers(
    pair: tuple[str, str], headers: dict[str, str], body: bytes
) -> None:
    fast, reference = pair
    assert send(fast, headers, body) == send(reference, headers, body)


def test_good_requests_take_the_fast_path_and_bad_ones_get_4xx(pair: tuple[str, str]) -> None:
    fast, _ = pair
    statuses: dict[str, Any] = {name: send(fast, headers, body)[0] for name, headers, body in REQUESTS}
    good, bad = [name for name, _, _ in REQUESTS[:6]], [name for name, _, _ in REQUESTS[6:]]
    assert [statuses[name] for name in good] == [200] * len(good)
    assert [(name, statuses[name]) for name in bad if not 400 <= statuses[name] < 500] == []
