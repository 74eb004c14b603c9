"""The retrieval HTTP server: Search-R1's wire format over any ``Retriever``, with micro-batching and limits.

``create_app(retriever, ...)`` builds a FastAPI app with

- ``POST /retrieve`` ``{"queries": [str], "topk": int | null, "return_scores": bool}`` →
  ``{"result": [[{"document": {"id", "contents", "title", "text"}, "score": float}, ...], ...]}``, one list per
  query in request order; ``score`` is left out when ``return_scores`` is false (docs/formats.md);
- ``GET /health`` (status, passage count) and ``GET /info`` (``retriever.describe()``, limits, counters);
- an OpenAPI schema whose field limits are the ones enforced.

Concurrent requests are coalesced by ``MicroBatcher``: queries arriving within ``batch_window_ms`` (or until
``max_batch_queries``) go to one ``batch_search`` call in a worker thread, so the event loop keeps accepting
requests while the index works. Every bad input gets a 4xx ``{"error": ...}``; a failing retriever gets a 503
and the server keeps serving. ``serve(retriever, ...)`` runs the app under uvicorn (uvloop and httptools when
installed); ``retriever_server.workers`` serves an index directory from several processes on one port.

Well-formed ``/retrieve`` requests skip FastAPI's per-request machinery (``FastRetrieve``): verl sends one small
request per trajectory, and that machinery cost more than the search. Everything else — every error included —
still goes through the FastAPI route, which is the reference for what a request gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException

from retriever_server.base import Retriever, SearchHit

DEFAULT_MAX_QUERIES = 4096  # Search-R1's trainer sends a whole rollout batch of queries in one request
DEFAULT_MAX_QUERY_CHARS = 4096
DEFAULT_MAX_TOPK = 100
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# 0: batch what queued while the last batch ran — no added latency when idle (benchmarks/retriever_throughput.py)
DEFAULT_BATCH_WINDOW_MS = 0.0
DEFAULT_MAX_BATCH_QUERIES = 512

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RetrieverFailure(Exception):
    """The retriever raised or returned something unusable; the request gets a 503."""


# ---------------------------------------------------------------------------------------------- wire models


class Document(BaseModel):
    id: str
    contents: str = Field(description="wiki-18 form: the quoted title on the first line, then the text")
    title: str
    text: str


class Hit(BaseModel):
    document: Document
    # SkipJsonSchema: the schema says "number, optional" — absent when return_scores is false, never null
    score: float | SkipJsonSchema[None] = None


class RetrieveResponse(BaseModel):
    result: list[list[Hit]] = Field(description="one list of hits per query, in request order, best first")


class ErrorResponse(BaseModel):
    error: str
    details: list[dict[str, Any]] | SkipJsonSchema[None] = None


@dataclass(frozen=True)
class Limits:
    max_queries: int = DEFAULT_MAX_QUERIES
    max_query_chars: int = DEFAULT_MAX_QUERY_CHARS
    max_topk: int = DEFAULT_MAX_TOPK
    default_topk: int = 3
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS
    max_batch_queries: int = DEFAULT_MAX_BATCH_QUERIES

    def check(self) -> None:
        for name in ("max_queries", "max_query_chars", "max_topk", "default_topk", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.default_topk <= self.max_topk:
            raise ValueError(f"default_topk {self.default_topk} exceeds max_topk {self.max_topk}")
        if self.batch_window_ms < 0 or self.max_batch_queries < 1:
            raise ValueError("batch_window_ms must be >= 0 and max_batch_queries >= 1")


def request_model(limits: Limits) -> type[BaseModel]:
    """The /retrieve body model; built per app because its field limits are the app's limits."""
    # pattern "\S": a query needs one non-blank character (JSON Schema and pydantic both search, not anchor)
    query = Annotated[StrictStr, Field(min_length=1, max_length=limits.max_query_chars, pattern=r"\S")]
    queries = Annotated[list[query], Field(min_length=1, max_length=limits.max_queries)]
    topk = Annotated[StrictInt | None, Field(ge=1, le=limits.max_topk, description=f"default {limits.default_topk}")]
    return create_model(
        "RetrieveRequest",
        __config__=ConfigDict(extra="ignore"),
        queries=(queries, ...),
        topk=(topk, None),
        return_scores=(StrictBool, False),
    )


# ---------------------------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    queries: list[str]
    k: int
    future: asyncio.Future[list[list[SearchHit]]]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    requests: int = 0
    queries: int = 0
    batches: int = 0
    search_calls: int = 0
    failures: int = 0


class MicroBatcher:
    """Coalesces concurrent requests into ``batch_search`` calls run one at a time in a worker thread.

    A batch closes ``window_ms`` after its oldest request arrived or once it holds ``max_batch_queries``
    queries; a request is never split, so ``max_batch_queries=1`` turns batching off. Requests with different
    k in one batch get one ``batch_search`` call per k, so every answer equals a direct call with its own k.
    """

    def __init__(self, retriever: Retriever, *, window_ms: float, max_batch_queries: int, threads: int = 1) -> None:
        self.retriever = retriever
        self.window = window_ms / 1000.0
        self.max_batch_queries = max_batch_queries
        self.threads = threads
        self.stats = BatchStats()
        self._worker: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._pending: deque[_Job] = deque()
        self._pending_queries = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()

    async def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        if self._worker is None or self._worker.done():
            self._start_worker()
        job = _Job(queries, k, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_queries += len(queries)
        self.stats.requests += 1
        self.stats.queries += len(queries)
        self._arrived.set()
        if self._pending_queries >= self.max_batch_queries:
            self._full.set()
        return await job.future

    def _start_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._worker.get_loop() is not loop:
            self._reset()  # the app moved to a new event loop (a test client's, say): the old events are bound
        self._worker = loop.create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RetrieverFailure("server is shutting down"))

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._pending:
                self._arrived.clear()
                continue
            await self._wait_for_window()
            await self._execute(self._take_batch())

    async def _wait_for_window(self) -> None:
        # Measured from the oldest request, so under load (queue filled while the last batch ran) there is no wait.
        remaining = self._pending[0].enqueued + self.window - time.monotonic()
        if remaining > 0 and self._pending_queries < self.max_batch_queries:
            # Event.wait is safe to time out: unlike Queue.get under wait_for, nothing can be lost.
            # (asyncio.TimeoutError: the builtin one only from Python 3.11)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._full.wait(), remaining)

    def _take_batch(self) -> list[_Job]:
        batch = [self._pending.popleft()]
        size = len(batch[0].queries)
        while self._pending and size + len(self._pending[0].queries) <= self.max_batch_queries:
            job = self._pending.popleft()
            batch.append(job)
            size += len(job.queries)
        self._pending_queries -= size
        if self._pending_queries < self.max_batch_queries:
            self._full.clear()
        if not self._pending:
            self._arrived.clear()
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        jobs = [job for job in batch if not job.future.done()]  # a client that went away needs no answer
        self.stats.batches += 1
        for k in sorted({job.k for job in jobs}):
            group = [job for job in jobs if job.k == k]
            queries = [query for job in group for query in job.queries]
            try:
                self.stats.search_calls += 1
                results = await asyncio.to_thread(self._search, queries, k)
            except Exception as error:  # any retriever failure must reach its requests, not kill the worker
                self.stats.failures += 1
                _fail(group, error)
                continue
            _deliver(group, results)

    def _search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        results = self.retriever.batch_search(queries, k, threads=self.threads)
        if len(results) != len(queries):
            raise RetrieverFailure(f"retriever returned {len(results)} result lists for {len(queries)} queries")
        return results


def _deliver(group: Sequence[_Job], results: list[list[SearchHit]]) -> None:
    start = 0
    for job in group:
        end = start + len(job.queries)
        if not job.future.done():
            job.future.set_result(results[start:end])
        start = end


def _fail(group: Sequence[_Job], error: Exception) -> None:
    failure = error if isinstance(error, RetrieverFailure) else RetrieverFailure(f"{type(error).__name__}: {error}")
    for job in group:
        if not job.future.done():
            job.future.set_exception(failure)


# ---------------------------------------------------------------------------------------------- body size


class BodyLimitMiddleware:
    """Rejects bodies over ``max_bytes`` with a 413, by Content-Length and by the bytes actually received.

    The body is read here in full before the app sees it, so a chunked upload cannot grow past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, f"body of {declared} bytes exceeds the limit of {self.max_bytes} bytes")
            return
        body, disconnected = await self._read(receive)
        if body is None:
            await self._reject(send, f"body exceeds the limit of {self.max_bytes} bytes")
            return
        await self.app(scope, _replay(body, disconnected, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes | None, bool]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _reject(self, send: Send, message: str) -> None:
        response = JSONResponse({"error": message, "max_body_bytes": self.max_bytes}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, disconnected: bool, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnected:
            return {"type": "http.disconnect"}
        return await receive()

    return replay


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------------------------------------- fast path

# orjson writes exactly json.dumps' text for every string and for floats of these magnitudes (checked over
# every code point and 2M random floats); below 1e-4 it writes 0.00001 where json.dumps writes 1e-05.
_ORJSON_SAME_FLOATS = (1e-4, 1e16)


class FastRetrieve:
    """``POST /retrieve`` without FastAPI's routing, dependency solving (the auth check ran in a thread pool)
    and response stack: most of a one-query request's time went there, not into the search.

    It answers only what the FastAPI route would answer with results: the right bearer token when one is set,
    Content-Type ``application/json``, a whole body within the limit that parses as JSON and passes the
    route's own pydantic model. Anything else is handed, body replayed, to the FastAPI app, so every error is
    the one the route gives. A response is the route's bytes too: same JSON text, same headers.
    """

    def __init__(self, batcher: MicroBatcher, body_model: type[BaseModel], limits: Limits, token: str | None) -> None:
        self.batcher = batcher
        self.body_model = body_model
        self.limits = limits
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, fallback: ASGIApp) -> None:
        messages, body = await self._read(scope, receive)
        request = self._accept(scope, body) if body is not None else None
        if request is None:
            await fallback(scope, _replay_messages(messages, receive), send)
            return
        await self._respond(request, send)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages received, and the body if it came whole within the limit (else None: the fallback's
        ``BodyLimitMiddleware`` reads on and rejects it)."""
        declared = _content_length(scope)
        if declared is not None and declared > self.limits.max_body_bytes:
            return [], None
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.limits.max_body_bytes:
                return messages, None
            if not message.get("more_body", False):
                return messages, b"".join(part.get("body", b"") for part in messages)

    def _accept(self, scope: Scope, body: bytes) -> Any:
        """The validated request, or None for anything the FastAPI route must judge."""
        content_type = authorization = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's headers.get reads them
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        if self.token is not None and not _bearer_matches(authorization, self.token):
            return None
        if content_type is None or content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            return None
        try:
            # orjson accepts a subset of what json.loads does (no NaN, no lone surrogates), with the same values
            return self.body_model.model_validate(orjson.loads(body))
        except Exception:  # invalid JSON or fields, or anything unforeseen: the route decides and says why
            return None

    async def _respond(self, request: Any, send: Send) -> None:
        k = request.topk if request.topk is not None else self.limits.default_topk
        try:
            results = await self.batcher.search(list(request.queries), k)
            status, body = 200, _results_json(results, request.return_scores)
        except Exception as error:  # as in the route: the retriever's failure is not the client's fault
            status, body = 503, bytes(_error(503, f"retriever failed: {error}").body)
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _bearer_matches(header: bytes | None, expected: bytes) -> bool:
    """FastAPI's HTTPBearer reading of an Authorization header, compared in constant time."""
    scheme, _, credentials = (header or b"").decode("latin-1").partition(" ")
    given = credentials.strip().encode()
    return scheme.lower() == "bearer" and bool(given) and hmac.compare_digest(given, expected)


def _results_json(results: list[list[SearchHit]], with_scores: bool) -> bytes:
    content = {"result": [[_hit_json(hit, with_scores) for hit in hits] for hits in results]}
    low, high = _ORJSON_SAME_FLOATS
    if not with_scores or all(low <= abs(hit["score"]) < high for hits in content["result"] for hit in hits):
        try:
            return orjson.dumps(content)
        except orjson.JSONEncodeError:
            pass  # a lone surrogate in a passage: JSONResponse below raises what the route raised (a 503)
    return bytes(JSONResponse(content).body)  # json.dumps itself: NaN raises, tiny scores keep their form


def _replay_messages(messages: list[Message], receive: Receive) -> Receive:
    pending = deque(messages)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay


class RetrieverApp(FastAPI):
    """The FastAPI app, with ``POST /retrieve`` offered to ``fast_retrieve`` first (when set)."""

    fast_retrieve: FastRetrieve | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_retrieve
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["path"] == "/retrieve"
            and scope["method"] == "POST"
            and not scope.get("root_path")  # mounted under a prefix: leave routing to Starlette
        ):
            await fast(scope, receive, send, super().__call__)
            return
        await super().__call__(scope, receive, send)


# ---------------------------------------------------------------------------------------------- errors


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return _error(400, "request body is not valid JSON")
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type and any(tuple(error.get("loc", ())) == ("body",) for error in errors):
        # FastAPI only parses JSON bodies sent as JSON (curl -d sends a form type): say so, not "not a dict"
        return _error(415, f"send the body as JSON with Content-Type: application/json (got {content_type!r})")
    # no "input" echo: it may be megabytes of query text
    details = [
        {"loc": list(error.get("loc", ())), "msg": _message(error), "type": error.get("type")} for error in errors
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc'][1:])) or 'body'}: {d['msg']}" for d in details[:5])
    return _error(422, f"invalid request: {summary}", details=details)


def _message(error: Any) -> str:
    if error.get("type") == "string_pattern_mismatch":
        return "a query must contain a non-blank character"
    return str(error.get("msg", ""))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = _error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal server error: {type(exc).__name__}")


# ---------------------------------------------------------------------------------------------- the app


def create_app(
    retriever: Retriever,
    *,
    max_queries: int = DEFAULT_MAX_QUERIES,
    max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
    max_topk: int = DEFAULT_MAX_TOPK,
    default_topk: int = 3,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    token: str | None = None,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    max_batch_queries: int = DEFAULT_MAX_BATCH_QUERIES,
    search_threads: int = 1,
    fast_path: bool = True,
) -> RetrieverApp:
    """A FastAPI app serving ``retriever`` (see the module docstring); ``token`` turns on bearer auth;
    ``fast_path=False`` sends every request through the FastAPI route (the reference the fast path must match)."""
    limits = Limits(
        max_queries, max_query_chars, max_topk, default_topk, max_body_bytes, batch_window_ms, max_batch_queries
    )
    limits.check()
    batcher = MicroBatcher(
        retriever, window_ms=batch_window_ms, max_batch_queries=max_batch_queries, threads=search_threads
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = RetrieverApp(
        title="ExpandSearch retriever",
        version="1.0",
        lifespan=lifespan,
        description="Search-R1-compatible retrieval API (docs/formats.md).",
    )
    app.state.batcher = batcher
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    install_error_handlers(app)
    body_model = request_model(limits)
    _add_routes(app, retriever, limits, batcher, bearer_auth(token), body_model)
    if fast_path:
        app.fast_retrieve = FastRetrieve(batcher, body_model, limits, token)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "one line", ...}`` with its status: 400 bad JSON, 415 not JSON, 422 invalid
    fields (no echo of the input), HTTPExceptions as raised, 500 without a traceback."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


_BEARER = HTTPBearer(auto_error=False, description="required when the server was started with a token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def bearer_auth(token: str | None) -> Callable[..., None]:
    """A FastAPI dependency requiring ``Authorization: Bearer <token>`` (a 401 otherwise); None: no check."""
    expected = token.encode() if token is not None else None

    def check(credentials: Credentials) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest: the comparison time must not reveal how much of a guessed token was right
        if credentials is None or not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "body is not JSON"),
        (415, "body not sent as JSON"),
        (401, "missing or wrong bearer token"),
        (413, "body too large"),
        (422, "invalid request"),
        (503, "retriever failed"),
    ]
}


def _add_routes(
    app: FastAPI,
    retriever: Retriever,
    limits: Limits,
    batcher: MicroBatcher,
    auth: Callable[..., None],
    body_model: type[BaseModel],
) -> None:
    async def retrieve(body: Any) -> JSONResponse:
        """Top-k passages for each query (Search-R1's request and response shapes)."""
        request: Any = body
        k = request.topk if request.topk is not None else limits.default_topk
        try:
            results = await batcher.search(list(request.queries), k)
            return JSONResponse(
                {"result": [[_hit_json(hit, request.return_scores) for hit in hits] for hits in results]}
            )
        except Exception as error:  # the retriever's failure (or unserialisable hits) is not the client's fault
            return _error(503, f"retriever failed: {error}")

    # The body model is built at run time, and this module's annotations are strings (PEP 563) that FastAPI
    # resolves in module globals, so the real type is set here before the route reads it.
    retrieve.__annotations__["body"] = body_model
    app.post("/retrieve", response_model=RetrieveResponse, responses=ERROR_RESPONSES, dependencies=[Depends(auth)])(
        retrieve
    )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and the number of passages served (no token needed)."""
        return {"status": "ok", "passages": len(retriever)}

    @app.get("/info", responses={401: ERROR_RESPONSES[401]}, dependencies=[Depends(auth)])
    async def info() -> dict[str, Any]:
        """The retriever's description, the server's limits and request counters."""
        return {"retriever": retriever.describe(), "limits": limits.__dict__, "stats": batcher.stats.__dict__}


def _hit_json(hit: SearchHit, with_score: bool) -> dict[str, Any]:
    document = {"id": hit.id, "contents": hit.contents, "title": hit.title, "text": hit.text}
    return {"document": document, "score": float(hit.score)} if with_score else {"document": document}


def warm_up(retriever: Retriever) -> None:
    """One search before serving: a process's first compiles numba kernels (BM25) or moves an encoder to its
    device, seconds that the first clients would otherwise wait (with verl's request timeouts running)."""
    retriever.search("warm up the retriever", 1)


def freeze_startup_objects() -> None:
    """Move every object alive now (the index, its vocabulary, the modules: ~200k objects for the wiki-18
    sample) out of the garbage collector's reach. A full collection scanned them all, ~100 ms with the event
    loop stopped: that was the p99 latency under load. They live as long as the server anyway."""
    import gc

    gc.collect()
    gc.freeze()


def serve(
    retriever: Retriever,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = False,
    **app_options: Any,
) -> None:
    """Run ``create_app(retriever, **app_options)`` under uvicorn until interrupted (loopback by default).

    uvicorn picks uvloop and httptools when they are installed ("auto"). No access log by default: at
    thousands of requests a second, a log line per request costs more than a BM25 search."""
    import uvicorn

    app = create_app(retriever, **app_options)
    freeze_startup_objects()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


class ServerThread:
    """A real uvicorn server for ``app`` in a background thread (tests, benchmarks, notebooks).

    ``port=0`` lets the OS pick a free port, read back as ``.port`` once started, so there is no race
    between finding a free port and binding it. Use as a context manager; ``url`` is the base URL.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        import uvicorn

        self.host = host
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        self._thread = threading.Thread(target=self._server.run, name="retriever-server", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"retriever server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
