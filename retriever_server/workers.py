"""Serve one index directory from several worker processes on one port (``serve-retriever --workers N``).

One Python process answers HTTP on one core: the GIL serialises parsing, validation, JSON and the BM25 search.
verl's agent loop sends hundreds of one-query requests at once, so more cores need more processes. Each worker

- loads the index itself from the index directory: the passage store and the BM25 arrays are memory-mapped, so
  the page cache holds one copy of them for all workers (only the vocabulary is per process);
- listens on its own socket bound to the same port with ``SO_REUSEPORT``, so the kernel spreads new connections
  evenly over the workers. With one shared listening socket (uvicorn's own ``--workers``) the first worker to
  wake accepts a whole burst, and 64 connections opened at once can all land on one process.

The parent only reserves the port (a bound socket that never listens, so ``port=0`` works and nothing else can
take the port meanwhile), starts the workers, waits until each one listens, and stops them all when it is
stopped (SIGTERM, SIGINT) or when any worker exits. ``GET /info`` counters are per worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

STOP_TIMEOUT_S = 30.0


class WorkerError(RuntimeError):
    """A worker could not start (its index did not load, its port could not be bound) or exited on its own."""


@dataclass(frozen=True)
class WorkerSpec:
    """What each worker needs to load and serve the index (pickled into spawned processes)."""

    index_dir: str
    host: str = "127.0.0.1"
    device: str | None = None
    log_level: str = "info"
    access_log: bool = False
    app_options: dict[str, Any] = field(default_factory=dict)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (and SO_REUSEADDR, for restarts over TIME_WAIT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkerError("several workers need SO_REUSEPORT, which this platform lacks; run one worker")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_workers(spec: WorkerSpec, port: int, workers: int, on_ready: Callable[[int], None] | None = None) -> None:
    """Run ``workers`` processes serving ``spec.index_dir`` on ``port`` until stopped; ``on_ready(port)`` is
    called once all listen. Raises ``WorkerError`` when a worker fails to start or exits."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing loaded is inherited
    with reuseport_socket(spec.host, port) as reserved, _stop_on_signals():
        port = int(reserved.getsockname()[1])
        processes: list[BaseProcess] = []
        try:
            pipes = [_start(context, spec, port, number, processes) for number in range(workers)]
            _wait_ready(pipes)
            if on_ready is not None:
                on_ready(port)
            wait([process.sentinel for process in processes])
            raise WorkerError("a worker exited; stopping the others")
        finally:
            _stop(processes)


def _start(context: Any, spec: WorkerSpec, port: int, number: int, processes: list[BaseProcess]) -> Connection:
    """Start worker ``number`` (appended to ``processes``); returns the pipe it reports readiness on."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(spec, port, send), name=f"retriever-worker-{number}")
    process.start()
    processes.append(process)
    send.close()  # the worker holds the only write end now, so its death reads as EOF
    return receive


class _Stopped(Exception):
    """Raised in the parent by SIGTERM / SIGINT to leave ``wait`` and stop the workers."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        for other in (signal.SIGTERM, signal.SIGINT):  # a second signal must not interrupt stopping the workers
            signal.signal(other, signal.SIG_IGN)
        raise _Stopped(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stopped:
        pass  # a requested stop is a clean exit
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_ready(pipes: list[Connection]) -> None:
    """Until every worker reported that it listens; a worker's startup error is raised here."""
    waiting = set(pipes)
    while waiting:
        for pipe in wait(list(waiting)):
            assert isinstance(pipe, Connection)
            message = _receive(pipe)
            if message is not None:
                raise WorkerError(message)
            waiting.discard(pipe)


def _receive(pipe: Connection) -> str | None:
    """None when the worker is ready, else why it is not (a worker that died first says nothing: EOF)."""
    try:
        message: str | None = pipe.recv()
    except EOFError:
        return "a worker exited before it was ready"
    return message


def _stop(processes: list[BaseProcess]) -> None:
    """SIGTERM (uvicorn finishes the requests in flight), then SIGKILL whatever is left after the timeout."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        if process.pid is not None:
            process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _worker(spec: WorkerSpec, port: int, ready: Connection) -> None:
    """One worker: load the index, listen, tell the parent, serve until SIGTERM."""
    import uvicorn

    from retriever_server.index_dir import load_index
    from retriever_server.server import create_app, freeze_startup_objects, warm_up

    try:
        retriever = load_index(spec.index_dir, device=spec.device)
        warm_up(retriever)
        sock = reuseport_socket(spec.host, port)
        sock.listen(2048)
    except Exception as error:  # the parent reports it and stops the others
        ready.send(f"worker could not start: {type(error).__name__}: {error}")
        raise SystemExit(1) from error
    ready.send(None)
    ready.close()
    app = create_app(retriever, **spec.app_options)
    freeze_startup_objects()
    config = uvicorn.Config(app, log_level=spec.log_level, access_log=spec.access_log)
    uvicorn.Server(config).run(sockets=[sock])
