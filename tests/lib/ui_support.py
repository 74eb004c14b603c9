"""The UI tests' helpers: the hostile passage, and a UI server on a free port.

The hostile passage (``EVIL_TITLE``) holds ``<script>`` and an ``onerror`` image: the page must show it as text,
and a test policy that searches for ``EVIL_QUERY`` retrieves it (``ui_index_dir`` in tests/expandsearch/ui).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI

from agent_env.episode import AgentEnv
from expandsearch.ui.app import create_app
from retriever_server.server import ServerThread

EVIL_TITLE = "<script>window.__pwned = 1</script>Zorbulon"
EVIL_TEXT = 'Zorbulon quaxite <img src="x" onerror="window.__pwned = 2"> <script>window.__pwned = 3</script> glimmer.'
EVIL_QUERY = "Zorbulon quaxite glimmer"


@contextmanager
def ui_app_server(build_env: Callable[[], Awaitable[AgentEnv]] | None, **options: Any) -> Iterator[tuple[str, FastAPI]]:
    """A real uvicorn server of the UI app on a free loopback port; yields its base URL and the app.

    ``options``: ``create_app``'s (library, token, limits, squeezer, close_env)."""
    served: dict[str, Any] = {"model": "test policy", "retriever": "tiny world BM25"}
    app = create_app(build_env, served=served, **options)
    with ServerThread(app) as server:
        yield server.url, app


@contextmanager
def ui_server(build_env: Callable[[], Awaitable[AgentEnv]] | None, **options: Any) -> Iterator[str]:
    """:func:`ui_app_server`'s URL alone."""
    with ui_app_server(build_env, **options) as (url, _):
        yield url
