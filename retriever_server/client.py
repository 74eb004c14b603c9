"""HTTP clients for the retrieval server (ours or Search-R1's: the wire format is the same, docs/formats.md).

``AsyncRetrieverClient.retrieve(queries, topk)`` returns one ``SearchHit`` list per query, in order. It retries
connection errors, timeouts and 5xx answers with exponential backoff and then raises
``RetrieverUnavailableError``; a 4xx is the caller's mistake and raises ``RetrieverRequestError`` at once with
the server's message. Requests with more queries than the server accepts (learned from ``/info``, or given)
are split and the answers concatenated in order. ``RetrieverClient`` is the blocking twin, for scripts.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from retriever_server.base import SearchHit
from retriever_server.corpus import split_contents

T = TypeVar("T")

NO_LIMIT_LEARNED = 0  # /info missing (a Search-R1 server) or without limits: send every request whole


class RetrieverError(Exception):
    """Base class of the client's errors."""


class RetrieverRequestError(RetrieverError):
    """The server rejected the request (4xx) or answered something that is not the retrieval format."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url} answered {status}: {message}")
        self.url = url
        self.status = status
        self.message = message


class RetrieverUnavailableError(RetrieverError):
    """No usable answer after every retry (connection refused, timeouts, 5xx)."""

    def __init__(self, url: str, attempts: int, last_error: str) -> None:
        super().__init__(f"retriever at {url} unavailable after {attempts} attempt(s); last error: {last_error}")
        self.url = url
        self.attempts = attempts
        self.last_error = last_error


class AsyncRetrieverClient:
    """Async client for ``/retrieve``, ``/health`` and ``/info``; use ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        token: str | None = None,
        max_queries_per_request: int | None = None,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._query_limit = max_queries_per_request
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)

    async def retrieve(
        self, queries: Sequence[str], topk: int | None = None, return_scores: bool = True
    ) -> list[list[SearchHit]]:
        """Hits per query, in query order; without scores, every hit's score is NaN."""
        queries = list(queries)
        if not queries:
            return []
        limit = await self._limit() or len(queries)
        chunks = [queries[start : start + limit] for start in range(0, len(queries), limit)]
        answers = await asyncio.gather(*(self._retrieve_chunk(chunk, topk, return_scores) for chunk in chunks))
        return [hits for answer in answers for hits in answer]

    async def health(self) -> dict[str, Any]:
        return _json_object(await self._request("GET", "/health"), f"{self.base_url}/health")

    async def info(self) -> dict[str, Any]:
        return _json_object(await self._request("GET", "/info"), f"{self.base_url}/info")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRetrieverClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _limit(self) -> int:
        if self._query_limit is None:
            try:
                limit = (await self.info()).get("limits", {}).get("max_queries")
            except RetrieverRequestError:
                limit = None
            self._query_limit = limit if isinstance(limit, int) and limit > 0 else NO_LIMIT_LEARNED
        return self._query_limit

    async def _retrieve_chunk(self, queries: list[str], topk: int | None, return_scores: bool) -> list[list[SearchHit]]:
        url = f"{self.base_url}/retrieve"
        body = {"queries": queries, "topk": topk, "return_scores": return_scores}
        result = _json_object(await self._request("POST", "/retrieve", json=body), url).get("result")
        if not isinstance(result, list) or len(result) != len(queries):
            raise RetrieverRequestError(url, 200, f"expected 'result' with {len(queries)} lists, got {result!r:.200}")
        try:
            return [[_hit(entry, return_scores) for entry in hits] for hits in result]
        except (TypeError, KeyError, ValueError) as error:
            raise RetrieverRequestError(url, 200, f"malformed hit: {error!r}") from error

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with retries: transport errors and 5xx back off and retry, 4xx raise at once."""
        url = f"{self.base_url}{path}"
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:  # refused, reset, timeouts, protocol errors
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {_server_message(response)}"
                continue
            if response.status_code >= 400:
                raise RetrieverRequestError(url, response.status_code, _server_message(response))
            return response
        raise RetrieverUnavailableError(url, self.retries + 1, last_error)


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        # ours says "error"; FastAPI's default handlers (a Search-R1 server) say "detail"
        return str(body.get("error", body.get("detail", body)))[:500]
    return str(body)[:500]


def _json_object(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as error:
        raise RetrieverRequestError(
            url, response.status_code, f"answer is not JSON: {response.text[:200]!r}"
        ) from error
    if not isinstance(body, dict):
        raise RetrieverRequestError(url, response.status_code, f"answer is not a JSON object: {body!r:.200}")
    return body


def _hit(entry: dict[str, Any], with_score: bool) -> SearchHit:
    document = entry["document"]
    title, text = document.get("title"), document.get("text")
    if not isinstance(title, str) or not isinstance(text, str):
        # a Search-R1 server sends the corpus row: id and wiki-18 "contents" only
        title, text = split_contents(str(document["contents"]))
    score = float(entry["score"]) if with_score and entry.get("score") is not None else math.nan
    return SearchHit(str(document["id"]), title, text, score)


class RetrieverClient:
    """Blocking client with the same methods; it runs an ``AsyncRetrieverClient`` on its own loop thread.

    A private loop in a thread (rather than ``asyncio.run`` per call) keeps one connection pool across calls
    and works even when the caller is itself inside a running event loop (notebooks).
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="retriever-client", daemon=True)
        self._thread.start()
        self._client = self._call(_make_client(base_url, options))

    def retrieve(
        self, queries: Sequence[str], topk: int | None = None, return_scores: bool = True
    ) -> list[list[SearchHit]]:
        return self._call(self._client.retrieve(queries, topk, return_scores))

    def health(self) -> dict[str, Any]:
        return self._call(self._client.health())

    def info(self) -> dict[str, Any]:
        return self._call(self._client.info())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> RetrieverClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


async def _make_client(base_url: str, options: dict[str, Any]) -> AsyncRetrieverClient:
    # built on the loop thread, so httpx's pool belongs to the loop that will use it
    return AsyncRetrieverClient(base_url, **options)
