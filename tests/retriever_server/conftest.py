"""Fixtures for the retrieval server and client tests: a real BM25 index over wiki-18 passages, real servers.

Servers are real uvicorn instances on OS-picked free ports in background threads (``ServerThread``);
nothing is mocked. The index counts its ``batch_search`` calls, which is how coalescing is observed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import CountingBM25

from retriever_server.corpus import Passage
from retriever_server.server import ServerThread, create_app

WIKI_PASSAGES = 400
TEST_TOKEN = "s3cret-token"


@pytest.fixture(scope="session")
def wiki_index(wiki18_passages: tuple[Passage, ...]) -> CountingBM25:
    index = CountingBM25.build(wiki18_passages[:WIKI_PASSAGES])
    index.search("warm up numba")  # the first numba retrieval compiles for seconds; not inside a request timeout
    return index


@pytest.fixture(scope="session")
def wiki_queries(wiki_index: CountingBM25) -> list[str]:
    """Real questions-like queries: the first words of passage titles and texts (all distinct)."""
    queries = [f"{p.title} {' '.join(p.text.split()[3:8])}" for p in wiki_index.passages[:120]]
    return list(dict.fromkeys(queries))


@pytest.fixture(scope="session")
def server_url(wiki_index: CountingBM25) -> Iterator[str]:
    """A server with small limits (so limit tests stay cheap) and a 10 ms batching window."""
    app = create_app(
        wiki_index, max_queries=16, max_query_chars=300, max_topk=20, max_body_bytes=20_000, batch_window_ms=10
    )
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture(scope="session")
def token_server_url(wiki_index: CountingBM25) -> Iterator[str]:
    with ServerThread(create_app(wiki_index, token=TEST_TOKEN)) as server:
        yield server.url
