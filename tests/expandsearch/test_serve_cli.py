"""``expandsearch serve-retriever`` as a real subprocess on a free port, over a BM25 index directory."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import free_port, require_console_script, run_expandsearch, wait_for_health

from retriever_server.corpus import Passage, write_wiki18_jsonl
from retriever_server.index_dir import build_index

TOKEN_VAR = "EXPANDSEARCH_TEST_RETRIEVER_TOKEN"


@pytest.fixture(scope="module")
def index_dir(wiki18_passages: tuple[Passage, ...], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve_cli")
    corpus = folder / "corpus.jsonl"
    write_wiki18_jsonl(wiki18_passages[:200], corpus)
    build_index(corpus, "bm25", folder / "index", progress=False)
    return folder / "index"


@pytest.fixture
def served(index_dir: Path) -> Iterator[str]:
    script = require_console_script()
    port = free_port()
    env = {**os.environ, TOKEN_VAR: "cli-token"}
    command = [str(script), "serve-retriever", "--index", str(index_dir), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--token-env", TOKEN_VAR, "--topk-max", "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, lambda: process.stdout.read() if process.stdout else "", timeout=60)
        yield url
    finally:
        process.terminate()  # uvicorn shuts down cleanly on SIGTERM
        process.wait(timeout=30)


def test_serve_retriever_answers_health_and_retrieve(served: str) -> None:
    assert httpx.get(f"{served}/health").json() == {"status": "ok", "passages": 200}
    payload = {"queries": ["Exploration of Uranus"], "topk": 2, "return_scores": True}
    assert httpx.post(f"{served}/retrieve", json=payload).status_code == 401
    headers = {"Authorization": "Bearer cli-token"}
    answer = httpx.post(f"{served}/retrieve", json=payload, headers=headers, timeout=60).json()
    assert answer["result"][0][0]["document"]["title"] == "Exploration of Uranus"
    too_many = httpx.post(f"{served}/retrieve", json={**payload, "topk": 6}, headers=headers)
    assert too_many.status_code == 422


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_expandsearch("serve-retriever", *args, timeout=60, env=env)


def test_unset_token_variable_is_a_user_error(index_dir: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != TOKEN_VAR}
    result = run_cli("--index", str(index_dir), "--token-env", TOKEN_VAR, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert TOKEN_VAR in result.stderr


def test_missing_index_is_a_user_error(tmp_path: Path) -> None:
    result = run_cli("--index", str(tmp_path / "nothing-here"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_workers_serve_one_port_from_several_processes_with_the_same_answers(index_dir: Path, served: str) -> None:
    script = require_console_script()
    port = free_port()
    command = [str(script), "serve-retriever", "--index", str(index_dir), "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, lambda: process.stdout.read() if process.stdout else "", timeout=120)
        listening = listening_processes(process.pid, port, expected=2)
        assert len(listening) == 2
        payload = {"queries": ["Exploration of Uranus", "The Sound of Music"], "topk": 3, "return_scores": True}
        single = httpx.post(f"{served}/retrieve", json=payload, headers={"Authorization": "Bearer cli-token"})
        for _ in range(6):  # new connections, spread by the kernel over both workers
            assert httpx.post(f"{url}/retrieve", json=payload, timeout=60).content == single.content
        assert httpx.post(f"{url}/retrieve", json={"queries": []}).status_code == 422
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0
    assert not any(child.is_running() for child in listening)


def listening_processes(parent: int, port: int, expected: int, timeout: float = 60) -> list[Any]:
    """The descendants of ``parent`` listening on ``port``, once ``expected`` of them do (or at the timeout):
    /health answers as soon as the first worker listens."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        found = [
            child
            for child in psutil.Process(parent).children(recursive=True)
            if any(conn.laddr.port == port and conn.status == "LISTEN" for conn in child.net_connections())
        ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
