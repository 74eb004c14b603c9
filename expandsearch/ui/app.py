"""The UI's FastAPI app: the static page, live episodes as server-sent events, and the trace browser's API.

Routes (every ``/api`` route but ``/api/health`` needs the bearer token when the server has one):

- ``GET /`` and ``/static/*``: the page (plain HTML, CSS and JavaScript; everything it shows goes in as text).
- ``GET /api/health``; ``GET /api/info``: what is served (policy, retriever, squeezer), the episode defaults and
  the limits.
- ``POST /api/episodes`` ``{"question": …, settings…}``: a ``text/event-stream`` of the episode's events
  (``expandsearch.ui.live``). Over a limit: 413 (body), 422 (a setting or the question), 429 (episodes in flight).
- ``GET /api/traces``; ``GET /api/traces/questions?run=&dataset=&method=[&correct=][&type=][&text=]``;
  ``GET /api/traces/episode?run=&dataset=&method=&id=`` (``expandsearch.ui.traces``).

Errors are ``{"error": "one line"}`` with their status, as the retriever server's are.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_env.episode import AgentEnv
from expandsearch.ui.live import EpisodeRequest, LiveAgent, LiveLimits, TooManyEpisodes
from expandsearch.ui.traces import TraceLibrary, TraceNotFound
from retriever_server.server import BodyLimitMiddleware, bearer_auth, install_error_handlers

STATIC_DIR = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    # defence in depth: the page puts every text in with textContent, and no inline script would run anyway
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

EnvBuilder = Callable[[], Awaitable[AgentEnv]]


def create_app(
    build_env: EnvBuilder | None,
    *,
    served: Mapping[str, Any] | None = None,
    squeezer: str = "extractive",
    library: TraceLibrary | None = None,
    token: str | None = None,
    limits: LiveLimits | None = None,
    close_env: Callable[[AgentEnv], Awaitable[None]] | None = None,
) -> FastAPI:
    """The app. ``build_env`` makes the live view's environment on the server's event loop at start-up (None:
    traces only); ``served`` describes it for the page (policy, retriever); ``library`` serves the traces."""
    limits = limits or LiveLimits()
    limits.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        env = await build_env() if build_env is not None else None
        app.state.agent = LiveAgent(env, squeezer, limits) if env is not None else None
        try:
            yield
        finally:
            if env is not None and close_env is not None:
                await close_env(env)

    app = FastAPI(title="ExpandSearch UI", version="1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    install_error_handlers(app)
    auth = [Depends(bearer_auth(token))]
    _add_page_routes(app)
    _add_live_routes(app, auth, served or {}, library is not None)
    _add_trace_routes(app, auth, library)
    return app


def _add_page_routes(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}


def _add_live_routes(app: FastAPI, auth: list[Any], served: Mapping[str, Any], has_traces: bool) -> None:
    @app.get("/api/info", dependencies=auth)
    async def info(request: Request) -> dict[str, Any]:
        agent: LiveAgent | None = request.app.state.agent
        return {
            "live": agent is not None,
            "traces": has_traces,
            "served": dict(served),
            "squeezer": agent.squeezer_spec if agent else None,
            "settings": agent.settings() if agent else None,
            "limits": vars(agent.limits) if agent else None,
        }

    @app.post("/api/episodes", dependencies=auth)
    async def episodes(body: EpisodeRequest, request: Request) -> StreamingResponse:
        agent: LiveAgent | None = request.app.state.agent
        if agent is None:
            raise HTTPException(404, "this server has no policy (started with --traces only)")
        try:
            agent.check(body)
            episode = agent.start(body)
        except ValueError as error:
            raise HTTPException(422, str(error)) from error
        except TooManyEpisodes as error:
            raise HTTPException(429, str(error)) from error
        return StreamingResponse(
            _server_sent(episode.events()),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )


async def _server_sent(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    async for name, data in events:
        yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _trace_library(request: Request) -> TraceLibrary:
    library: TraceLibrary | None = request.app.state.library
    if library is None:
        raise HTTPException(404, "this server has no trace folders (start it with --traces DIR)")
    return library


Library = Annotated[TraceLibrary, Depends(_trace_library)]


def _add_trace_routes(app: FastAPI, auth: list[Any], library: TraceLibrary | None) -> None:
    app.state.library = library

    @app.get("/api/traces", dependencies=auth)
    async def runs(library: Library) -> dict[str, Any]:
        return {"runs": library.runs()}

    @app.get("/api/traces/questions", dependencies=auth)
    async def questions(
        library: Library,
        run: str,
        dataset: str,
        method: str,
        correct: Annotated[bool | None, Query()] = None,
        type: Annotated[str | None, Query(max_length=100)] = None,
        text: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> dict[str, Any]:
        try:
            return library.questions(run, dataset, method, correct=correct, question_type=type or None, text=text)
        except TraceNotFound as error:
            raise HTTPException(404, str(error)) from error

    @app.get("/api/traces/episode", dependencies=auth)
    async def episode(library: Library, run: str, dataset: str, method: str, id: str) -> dict[str, Any]:
        try:
            return library.episode(run, dataset, method, id)
        except TraceNotFound as error:
            raise HTTPException(404, str(error)) from error


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
