"""Benchmark: retrieval server throughput with micro-batching on and off, for 1, 8 and 32 concurrent clients.

    .venv/bin/python benchmarks/retriever_throughput.py [--seconds 3] [--concurrency 1 8 32]

Serves BM25 over the wiki-18 sample (7,923 passages, ``data_prep/sample_data``) from a separate process on a free
loopback port (so the load generator does not share the server's GIL), then each client sends requests of 3
NQ questions (ExpandSearch's 3 variants per search) back to back for a fixed time. Prints a markdown table
of queries/s and median request latency. "off" is ``max_batch_queries=1``: one ``batch_search`` per request;
"no window" batches only the requests that queued while the previous batch ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import time
from typing import Any

import aiohttp  # installed with ray/verl; see measure() for why not httpx
import httpx

from data_prep.samples import sample_file

CORPUS = sample_file("wiki18_sample/wiki18_passages7923.jsonl")
QUESTIONS = sample_file("nq/nq_test1000.jsonl")
QUERIES_PER_REQUEST = 3
TOPK = 3
MODES = {
    "on, 2 ms window": {"batch_window_ms": 2.0, "max_batch_queries": 512},
    "on, no window": {"batch_window_ms": 0, "max_batch_queries": 512},  # batches what queued meanwhile
    "off": {"batch_window_ms": 0, "max_batch_queries": 1},
}


def _serve(port: int, options: dict[str, Any]) -> None:
    from retriever_server.bm25 import BM25Index
    from retriever_server.corpus import load_passages
    from retriever_server.server import serve

    index = BM25Index.build(load_passages(CORPUS))
    index.search("warm up the numba kernels")
    serve(index, port=port, log_level="warning", **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start")


async def client_loop(
    http: aiohttp.ClientSession, url: str, queries: list[str], offset: int, stop: float, latencies: list[float]
) -> int:
    sent = 0
    while time.monotonic() < stop:
        start = (offset + sent * QUERIES_PER_REQUEST) % (len(queries) - QUERIES_PER_REQUEST)
        body = {"queries": queries[start : start + QUERIES_PER_REQUEST], "topk": TOPK, "return_scores": True}
        began = time.monotonic()
        async with http.post(f"{url}/retrieve", json=body) as response:
            response.raise_for_status()
            await response.read()
        latencies.append(time.monotonic() - began)
        sent += 1
    return sent * QUERIES_PER_REQUEST


async def measure(url: str, queries: list[str], clients: int, seconds: float) -> tuple[float, float]:
    """(queries per second, median latency in ms) for ``clients`` concurrent clients over ``seconds``."""
    latencies: list[float] = []
    # aiohttp, not httpx, as the load generator: httpx's connection pool saturated near 700 queries/s at
    # 32 connections here, which measured the client rather than the server.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        warm = time.monotonic() + 0.5
        await asyncio.gather(*(client_loop(http, url, queries, 97 * i, warm, []) for i in range(clients)))
        began = time.monotonic()
        counts = await asyncio.gather(
            *(client_loop(http, url, queries, 97 * i, began + seconds, latencies) for i in range(clients))
        )
        elapsed = time.monotonic() - began
    return sum(counts) / elapsed, 1000 * statistics.median(latencies)


def run_mode(mode: str, queries: list[str], args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, MODES[mode]), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        return {n: asyncio.run(measure(url, queries, n, args.seconds)) for n in args.concurrency}
    finally:
        process.terminate()
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per cell (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    queries = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    results = {mode: run_mode(mode, queries, args) for mode in MODES}
    print(
        f"BM25 (bm25s, numba) over {CORPUS.name}, {QUERIES_PER_REQUEST} NQ questions per request, "
        f"top-{TOPK}, {args.seconds:g} s per cell, {multiprocessing.cpu_count()} CPUs\n"
    )
    print("| clients | " + " | ".join(f"batching {mode}: queries/s (median ms)" for mode in MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for n in args.concurrency:
        cells = [f"{results[mode][n][0]:,.0f} ({results[mode][n][1]:.1f})" for mode in MODES]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
