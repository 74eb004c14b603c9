"""The ``/retrieve`` fast path where it could differ from the FastAPI route: scores whose JSON text orjson writes
differently, NaN and unencodable passages (503s), chunked and oversized bodies, odd Authorization headers.

As in test_fast_path.py, each request goes to two real servers over the same index, one with the fast path and
one without (the reference); here the whole response must match, headers included (all but ``date``). A
``FastRetrieve`` that counts what it answered shows which requests the fast path really took.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from retriever_server.base import SearchHit
from retriever_server.bm25 import BM25Index
from retriever_server.server import FastRetrieve, RetrieverApp, ServerThread, create_app

from .conftest import TEST_TOKEN


class CountingFastRetrieve(FastRetrieve):
    """The real fast path, counting the requests it answered itself (the rest went to the FastAPI route)."""

    answered = 0

    async def _respond(self, request: Any, send: Any) -> None:
        self.answered += 1
        await super()._respond(request, send)


def counting(app: RetrieverApp) -> CountingFastRetrieve:
    fast = app.fast_retrieve
    assert fast is not None
    app.fast_retrieve = CountingFastRetrieve(fast.batcher, fast.body_model, fast.limits, TEST_TOKEN)
    return app.fast_retrieve


class ScaledBM25(BM25Index):
    """Real BM25 hits with scores multiplied (tiny, huge, negative, NaN) or a lone surrogate in the text."""

    scale = 1.0
    text_suffix = ""

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
        return [
            [SearchHit(h.id, h.title, h.text + self.text_suffix, h.score * self.scale) for h in hits]
            for hits in super().batch_search(queries, k, threads)
        ]


@pytest.fixture(scope="module")
def scaled(wiki_index: BM25Index) -> ScaledBM25:
    return ScaledBM25(wiki_index.passages, wiki_index._retriever)


@pytest.fixture(scope="module")
def pair(scaled: ScaledBM25) -> Iterator[tuple[str, str, CountingFastRetrieve]]:
    limits = {"token": TEST_TOKEN, "max_body_bytes": 20_000}
    app = create_app(scaled, **limits)
    fast_path = counting(app)
    with ServerThread(app) as fast, ServerThread(create_app(scaled, fast_path=False, **limits)) as reference:
        yield fast.url, reference.url, fast_path


AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
BODY = b'{"queries": ["exploration of Uranus", "The Sound of Music"], "topk": 3, "return_scores": true}'


def answer(url: str, headers: Any, content: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    # a callable makes a fresh generator body per request: a generator is used up by one
    body = content() if callable(content) else content
    response = httpx.post(f"{url}/retrieve", headers=headers, content=body, timeout=30)
    kept = [(name, value) for name, value in response.headers.multi_items() if name != "date"]
    return response.status_code, kept, response.content


def same_answer(pair: tuple[str, str, CountingFastRetrieve], headers: Any, content: Any) -> int:
    """The status both servers gave, after checking that their responses are identical."""
    fast, reference, _ = pair
    got, expected = answer(fast, headers, content), answer(reference, headers, content)
    assert got == expected
    return got[0]


@pytest.mark.parametrize(
    ("scale", "status"),
    [(1.0, 200), (1e-7, 200), (1e-3, 200), (1e18, 200), (-1.0, 200), (-1e-9, 200), (math.nan, 503)],
    ids=["plain", "tiny: 1e-06 form", "small", "huge: 1e+19 form", "negative", "tiny negative", "NaN"],
)
def test_scores_of_every_magnitude_are_written_as_the_route_writes_them(
    pair: tuple[str, str, CountingFastRetrieve], scaled: ScaledBM25, scale: float, status: int
) -> None:
    scaled.scale = scale
    try:
        before = pair[2].answered
        assert same_answer(pair, JSON, BODY) == status
        assert pair[2].answered == before + 1  # the fast path answered it (the 503 too), not the route
    finally:
        scaled.scale = 1.0


def test_a_passage_json_cannot_encode_is_the_same_503(
    pair: tuple[str, str, CountingFastRetrieve], scaled: ScaledBM25
) -> None:
    scaled.text_suffix = "\ud800"  # a lone surrogate: no UTF-8 for it
    try:
        assert same_answer(pair, JSON, BODY) == 503
        without_scores = b'{"queries": ["exploration of Uranus"]}'
        assert same_answer(pair, JSON, without_scores) == 503
    finally:
        scaled.text_suffix = ""


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    """A generator body, which httpx sends chunked: no Content-Length, several ASGI body messages."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_chunked_bodies_within_and_over_the_limit(pair: tuple[str, str, CountingFastRetrieve]) -> None:
    before = pair[2].answered
    assert same_answer(pair, JSON, lambda: chunks(BODY, 7)) == 200
    assert pair[2].answered == before + 1
    huge = b'{"queries": ["' + b"a" * 30_000 + b'"]}'
    assert same_answer(pair, JSON, lambda: chunks(huge, 1000)) == 413  # no Content-Length: counted as it arrives
    assert same_answer(pair, JSON, huge) == 413  # by Content-Length, before reading
    assert pair[2].answered == before + 1


AUTHORIZATIONS = {
    "lower-case scheme": ([("authorization", f"bearer {TEST_TOKEN}")], 200),
    "spaces before the token": ([("authorization", f"Bearer   {TEST_TOKEN}")], 200),
    "wrong scheme": ([("authorization", f"Basic {TEST_TOKEN}")], 401),
    "scheme alone": ([("authorization", "Bearer")], 401),
    "token prefix": ([("authorization", f"Bearer {TEST_TOKEN[:-1]}")], 401),
    "first of two headers wrong": ([("authorization", "Bearer nope"), ("authorization", f"Bearer {TEST_TOKEN}")], 401),
    "first of two headers right": ([("authorization", f"Bearer {TEST_TOKEN}"), ("authorization", "Bearer nope")], 200),
}


@pytest.mark.parametrize("case", AUTHORIZATIONS.values(), ids=AUTHORIZATIONS.keys())
def test_authorization_headers_are_read_as_the_route_reads_them(
    pair: tuple[str, str, CountingFastRetrieve], case: tuple[list[tuple[str, str]], int]
) -> None:
    headers, status = case
    assert same_answer(pair, [*headers, ("content-type", "application/json")], BODY) == status


CONTENT_TYPES = {
    "upper case": ("APPLICATION/JSON", 200),
    "+json subtype (the route's call)": ("application/vnd.api+json", 200),
    "missing": (None, 415),
    "form": ("application/x-www-form-urlencoded", 415),
}


@pytest.mark.parametrize("case", CONTENT_TYPES.values(), ids=CONTENT_TYPES.keys())
def test_content_types(pair: tuple[str, str, CountingFastRetrieve], case: tuple[str | None, int]) -> None:
    content_type, status = case
    headers = [*AUTH.items(), *([("content-type", content_type)] if content_type else [])]
    assert same_answer(pair, headers, BODY) == status


def test_json_the_fast_parser_refuses_still_gets_the_routes_answer(
    pair: tuple[str, str, CountingFastRetrieve],
) -> None:
    # json.loads takes these and orjson does not: the route must still answer them as before
    utf16 = '{"queries": ["exploration of Uranus"]}'.encode("utf-16")
    assert same_answer(pair, JSON, utf16) == 200
    surrogate_query = b'{"queries": ["Uranus \\ud800"]}'
    assert same_answer(pair, JSON, surrogate_query) == 422  # pydantic refuses the lone surrogate
    big_integer = b'{"queries": ["Uranus"], "topk": 100000000000000000000000}'
    assert same_answer(pair, JSON, big_integer) == 422
