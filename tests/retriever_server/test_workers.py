"""Tests for retriever_server.workers: one index directory served by several real processes on one port.

``serve_workers`` runs here in the test process (it installs signal handlers, so it needs the main thread);
``on_ready`` does the checks while the workers serve, then kills one worker, which must stop the server. Nothing
is mocked: the workers are spawned interpreters that load the index directory and answer over loopback HTTP.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from support import free_port

from retriever_server.corpus import Passage, write_wiki18_jsonl
from retriever_server.index_dir import build_index, load_index
from retriever_server.workers import WorkerError, WorkerSpec, serve_workers

from .conftest import TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
QUERIES = ["Exploration of Uranus", "The Sound of Music film", "space probe lander"]
PAYLOAD = {"queries": QUERIES, "return_scores": True}


@pytest.fixture(scope="module")
def index_dir(wiki18_passages: tuple[Passage, ...], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("workers")
    write_wiki18_jsonl(wiki18_passages[:300], folder / "corpus.jsonl")
    build_index(folder / "corpus.jsonl", "bm25", folder / "index", progress=False)
    return folder / "index"


def listening_workers(port: int) -> list[psutil.Process]:
    """This process's children with a socket listening on ``port`` (not multiprocessing's resource tracker)."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if any(conn.laddr.port == port and conn.status == psutil.CONN_LISTEN for conn in child.net_connections())
    ]


def spawned_workers() -> list[psutil.Process]:
    """Live children started by multiprocessing's spawn (workers; its resource tracker runs another command)."""
    return [
        child
        for child in psutil.Process().children()
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE and "--multiprocessing-fork" in child.cmdline()
    ]


def established(process: psutil.Process, port: int) -> int:
    return sum(conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED for conn in process.net_connections())


def test_two_workers_share_the_port_the_load_and_the_answers_and_stop_together(index_dir: Path) -> None:
    direct = load_index(index_dir).batch_search(QUERIES, 3)
    expected = [[{"id": hit.id, "score": hit.score} for hit in hits] for hits in direct]
    seen: dict[str, Any] = {}

    def check(port: int) -> None:
        workers = listening_workers(port)
        seen["workers"] = workers
        assert len(workers) == 2
        url = f"http://127.0.0.1:{port}"
        # 16 connections, each its own client: the kernel spreads them over the two listening sockets
        clients = [httpx.Client(base_url=url, headers=AUTH, timeout=60) for _ in range(16)]
        try:
            bodies = {client.post("/retrieve", json=PAYLOAD).content for client in clients}
            assert len(bodies) == 1  # both workers answer byte for byte alike
            assert sorted(established(worker, port) for worker in workers)[0] >= 1, "one worker got no connection"
        finally:
            for client in clients:
                client.close()
        result = httpx.post(f"{url}/retrieve", json=PAYLOAD, headers=AUTH).json()["result"]
        assert [[{"id": h["document"]["id"], "score": h["score"]} for h in hits] for hits in result] == expected
        assert httpx.post(f"{url}/retrieve", json={"queries": QUERIES}).status_code == 401
        assert httpx.post(f"{url}/retrieve", json={"queries": []}, headers=AUTH).status_code == 422
        for worker in workers:  # each worker maps the index directory's files rather than reading them in
            mapped = {Path(area.path).name for area in worker.memory_maps() if area.path.startswith(str(index_dir))}
            assert {"passages.arrow", "data.csc.index.npy", "indices.csc.index.npy"} <= mapped
        os.kill(workers[0].pid, signal.SIGKILL)  # a crashed worker: the parent must stop the other and say so

    spec = WorkerSpec(str(index_dir), app_options={"token": TEST_TOKEN})
    with pytest.raises(WorkerError, match="a worker exited"):
        serve_workers(spec, free_port(), 2, on_ready=check)
    assert not any(worker.is_running() for worker in seen["workers"])  # stopped when serve_workers returned
    assert spawned_workers() == []


def test_a_worker_that_cannot_load_the_index_fails_the_start(index_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "index"
    broken.mkdir()
    for path in index_dir.rglob("*"):
        target = broken / path.relative_to(index_dir)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != "vocab.index.json":  # a BM25 part missing: the manifest still reads fine
            target.write_bytes(path.read_bytes())
    with pytest.raises(WorkerError, match=r"could not start.*vocab\.index\.json"):
        serve_workers(WorkerSpec(str(broken)), free_port(), 2, on_ready=lambda port: None)
    assert spawned_workers() == []  # the other worker, which loaded fine, was stopped too
