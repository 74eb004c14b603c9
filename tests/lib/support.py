"""Helpers shared by test modules of several packages (``tests/lib`` is on the path via pytest's ``pythonpath``).

Fixtures live in ``conftest.py`` files; this module holds the plain functions and classes that tests import:
running the installed ``expandsearch`` console script, finding a free port, waiting for a served ``/health``,
a BM25 index that counts its batch calls, hand-built trajectories for the metric tests, and reading JSON lines
and parquet values back for comparison.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_env.episode import Trajectory, TurnRecord
from retriever_server.base import SearchHit
from retriever_server.bm25 import BM25Index

EXPANDSEARCH = Path(sys.executable).parent / "expandsearch"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
"""The environment of a CLI subprocess in a test: one torch thread (the test workers share two cores), offline."""
"""The console script of this environment (``pip install -e .`` puts it next to the interpreter)."""


def require_console_script() -> Path:
    """The console script's path; skips the test when the package is not installed."""
    if not EXPANDSEARCH.is_file():
        pytest.skip(f"console script not installed at {EXPANDSEARCH} (pip install -e .)")
    return EXPANDSEARCH


def run_expandsearch(
    *args: str | Path, timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``expandsearch ARGS…`` in a subprocess and capture its output (never raises on a non-zero exit).

    ``env`` replaces the environment, as in ``subprocess.run`` (None: inherit this process's)."""
    command = [str(require_console_script()), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False)


def free_port() -> int:
    """A local port with nothing listening on it (for a server to start on, or a retriever that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_health(url: str, process: subprocess.Popen[str], output: Callable[[], str], timeout: float = 120) -> None:
    """Wait until ``url/health`` answers 200; fail with the server's ``output()`` if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited with {process.returncode}: {output()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"{url}/health did not answer within {timeout} s: {output()}")


@contextmanager
def served_retriever(index: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``expandsearch serve-retriever --index index`` as a subprocess on a free port, healthy, for the ``with``
    block; yields its URL and stops it afterwards."""
    port = free_port()
    command = [str(require_console_script()), "serve-retriever", "--index", str(index), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, lambda: process.stdout.read() if process.stdout else "", timeout=60)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


class CountingBM25(BM25Index):
    """BM25Index counting its ``batch_search`` calls (servers call it from worker threads, hence the lock)."""

    calls = 0
    _lock = threading.Lock()

    def batch_search(self, queries: Sequence[str], k: int = 3, threads: int = 1) -> list[list[SearchHit]]:
        with self._lock:
            self.calls += 1
        return super().batch_search(queries, k, threads)


VOLATILE_METRICS = ("timing/", "perf/")
"""Metric key prefixes that measure the machine, not the run: left out when runs are compared."""


def comparable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without the machine-dependent values (timings, throughput, latencies)."""
    return {
        key: value
        for key, value in metrics.items()
        if not key.startswith(VOLATILE_METRICS) and not key.endswith("latency_s")
    }


def raw_rows(path: Path, count: int | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines file as they are (its first ``count`` lines; all for None), blank lines skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:count] if line.strip()]


def plain(value: Any) -> Any:
    """Parquet reads lists back as numpy arrays: turn them (recursively) into lists for comparison."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def hand_built_trajectory(
    turns: Sequence[TurnRecord], answer: str | None, metrics: dict[str, float] | None = None
) -> Trajectory:
    """A played-looking episode for metric tests: five prompt tokens, two policy tokens per turn and one
    environment token after every search turn; ``metrics`` as the environment would record them (by default: no
    searches, no valid actions)."""
    mask: list[int] = []
    for turn in turns:
        mask += [1, 1] + ([0] if turn.action == "search" else [])
    default = {"searches": 0.0, "variants_per_search": 0.0, "valid_action_rate": 0.0}
    return Trajectory(
        prompt_ids=[0] * 5,
        response_ids=[1] * len(mask),
        response_mask=mask,
        response_logprobs=[0.0] * len(mask),
        reward=0.0,
        answer=answer,
        num_turns=len(turns),
        termination="answer" if answer is not None else "max_turns",
        metrics=metrics if metrics is not None else default,
        turns=list(turns),
        question="q",
        golden_answers=[],
    )
