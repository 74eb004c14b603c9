"""Benchmark: the retriever server under ``wrk``, B queries per request by C open connections.

    .venv/bin/python benchmarks/retriever_wrk.py [--seconds 10] [--batch 1 32 512] [--connections 1 16 64]
        [--server-args "--workers 2"] [--index DIR]

verl's agent loop sends one request per trajectory per turn, hundreds at once (B=1, large C); Search-R1's
trainer sends a whole rollout batch in one request (B=512). This sweeps both. It builds a BM25 index directory
over the wiki-18 sample (7,923 passages, ``data_prep/sample_data``) unless ``--index`` names one, runs
``expandsearch serve-retriever`` on it as a subprocess on a free loopback port (``--server-args`` are passed on),
and drives it with ``wrk`` (a C load generator: a Python client saturates long before the server does) through
a Lua script that cycles through POST bodies of B distinct NQ questions, top-3 with scores.

Prints one markdown row per cell: queries/s, requests/s, p50 and p99 request latency, and the CPU the server
(all its processes) and wrk used, in cores — on a 2-core machine the two compete, which bounds the B=1 rows.
Skips, with a message, when ``wrk`` is not on PATH (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from data_prep.samples import sample_file

CORPUS = sample_file("wiki18_sample/wiki18_passages7923.jsonl")
QUESTIONS = sample_file("nq/nq_test1000.jsonl")
TOPK = 3
BODIES_PER_BATCH = 64  # distinct bodies cycled per cell, so B=1 rows are not one cached query

# wrk runs this in each of its threads: pre-format every request once (init) so request() only hands one out,
# and print the counters from done() on one line this script parses. No response() hook: defining one makes wrk
# hand every body to Lua; non-2xx answers are counted in summary.errors.status either way.
LUA = r"""
local requests, position = {}, 1
local thread_count = 0

function setup(thread)
  thread:set("offset", thread_count * 17)
  thread_count = thread_count + 1
end

function init(args)
  -- init replaces wrk's own, which is what sets the Host header an HTTP/1.1 server requires
  local headers = {["Host"] = wrk.host .. ":" .. wrk.port, ["Content-Type"] = "application/json"}
  if args[2] and args[2] ~= "" then headers["Authorization"] = "Bearer " .. args[2] end
  for line in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("POST", "/retrieve", headers, line)
  end
  position = (offset or 0) % #requests + 1
end

function request()
  local r = requests[position]
  position = position % #requests + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Cell:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cores: float
    wrk_cores: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def questions() -> list[str]:
    return [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]


def write_bodies(path: Path, queries: list[str], batch: int) -> None:
    """``BODIES_PER_BATCH`` request bodies of ``batch`` consecutive questions each, one JSON object a line."""
    lines = []
    for number in range(BODIES_PER_BATCH):
        start = number * batch
        chosen = [queries[(start + i) % len(queries)] for i in range(batch)]
        lines.append(json.dumps({"queries": chosen, "topk": TOPK, "return_scores": True}))
    path.write_text("\n".join(lines) + "\n")


@contextmanager
def served(index: Path, extra: list[str], token: str | None, log: Path) -> Iterator[tuple[str, psutil.Process]]:
    """``expandsearch serve-retriever`` on ``index`` at a free port, until the block ends; its output goes to
    ``log`` (printed if it fails to start) so the table stays readable."""
    port = free_port()
    command = [sys.executable, "-m", "expandsearch", "serve-retriever", "--index", str(index), "--port", str(port)]
    env = dict(os.environ)
    if token:
        env["RETRIEVER_WRK_TOKEN"] = token
        command += ["--token-env", "RETRIEVER_WRK_TOKEN"]
    with log.open("wb") as output:
        process = subprocess.Popen([*command, *extra], env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start")


def warm_up(url: str, token: str | None) -> None:
    """One request first: a process's first BM25 search compiles numba kernels for seconds."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"queries": ["warm up the index"], "topk": TOPK}
    httpx.post(f"{url}/retrieve", json=body, headers=headers, timeout=300).raise_for_status()


def cpu_seconds(server: psutil.Process) -> float:
    """CPU time of the server and its worker processes so far."""
    total = 0.0
    for process in [server, *server.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_until_idle(server: psutil.Process, timeout: float = 300) -> None:
    """Until the server stops working: requests wrk abandoned at the end of a run are still answered, and they
    must not be counted against the next run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(server)
        time.sleep(0.3)
        if cpu_seconds(server) - before < 0.03:
            return
    raise RuntimeError(f"server still busy {timeout} s after the load stopped")


def wrk_children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, script: Path, bodies: Path, connections: int, seconds: float, args: argparse.Namespace) -> str:
    threads = min(args.wrk_threads, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "60s",  # a 512-query request behind 63 others takes seconds; wrk's 2 s default would count it lost
        "-s",
        str(script),
        f"{url}/retrieve",
        "--",
        str(bodies),
        args.token or "",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def measure(
    url: str, server: psutil.Process, script: Path, bodies: Path, connections: int, args: argparse.Namespace
) -> Cell:
    run_wrk(url, script, bodies, connections, args.warmup, args)  # fills caches, starts every worker's connections
    wait_until_idle(server)
    server_before, wrk_before, began = cpu_seconds(server), wrk_children_seconds(), time.monotonic()
    output = run_wrk(url, script, bodies, connections, args.seconds, args)
    elapsed = time.monotonic() - began
    server_used, wrk_used = cpu_seconds(server) - server_before, wrk_children_seconds() - wrk_before
    fields = next(line.split()[1:] for line in output.splitlines() if line.startswith("WRK_RESULT"))
    requests, duration_us, p50_us, p99_us, errors = map(int, fields)
    return Cell(
        requests, duration_us / 1e6, p50_us / 1e3, p99_us / 1e3, errors, server_used / elapsed, wrk_used / elapsed
    )


def build_index(folder: Path) -> Path:
    from retriever_server.index_dir import build_index as build

    build(CORPUS, "bm25", folder / "index", progress=False)
    return folder / "index"


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def sweep(args: argparse.Namespace, work: Path) -> None:
    index = args.index or build_index(work)
    script = work / "retrieve.lua"
    script.write_text(LUA)
    queries = questions()
    print(
        f"wrk over `expandsearch serve-retriever --index <BM25 over {CORPUS.name}> {' '.join(args.server_args)}`, "
        f"top-{TOPK} with scores, {args.seconds:g} s per cell after {args.warmup:g} s warm-up, "
        f"{os.cpu_count()} CPUs ({cpu_model()}), load average {os.getloadavg()[0]:.2f} at start\n",
        flush=True,
    )
    print("| B | C | queries/s | requests/s | p50 ms | p99 ms | errors | server cores | wrk cores |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    with served(index, args.server_args, args.token, work / "server.log") as (url, server):
        warm_up(url, args.token)
        for batch in args.batch:
            bodies = work / f"bodies_{batch}.jsonl"
            write_bodies(bodies, queries, batch)
            for connections in args.connections:
                cell = measure(url, server, script, bodies, connections, args)
                rate = cell.requests / cell.seconds
                print(
                    f"| {batch} | {connections} | {rate * batch:,.0f} | {rate:,.0f} | {cell.p50_ms:.1f} | "
                    f"{cell.p99_ms:.1f} | {cell.errors} | {cell.server_cores:.2f} | {cell.wrk_cores:.2f} |",
                    flush=True,
                )
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per cell (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before each cell (default 2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 512], help="queries per request")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64], help="open connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: leave a core to serve)")
    parser.add_argument("--server-args", type=shlex.split, default=[], help='e.g. "--workers 2" (one string)')
    parser.add_argument("--index", type=Path, help="an index directory to serve (default: build BM25 over the sample)")
    parser.add_argument("--token", help="run the server with this bearer token and send it")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("skipped: wrk is not on PATH (Debian: apt-get install -y wrk)")
        return
    with tempfile.TemporaryDirectory(prefix="retriever_wrk_") as work:
        sweep(args, Path(work))


if __name__ == "__main__":
    main()
