"""Coalescing concurrent async calls into batch calls: the micro-batching under engines, retrieval and squeezers.

Hundreds of episodes run as coroutines on one event loop. Each one asks for one generation, one retrieval or one
summary at a time; :class:`AsyncBatcher` gathers the requests that are waiting and hands them to one batch
function, so the model or index sees a batch instead of a trickle::

    batcher = AsyncBatcher(generate_batch, max_batch_size=64)
    result = await batcher.submit(request)   # from many coroutines at once

Policy: a batch takes whatever queued while the previous batch ran (up to ``max_batch_size``), optionally waiting
up to ``max_wait_s`` after the first request to let more arrive (no longer once the batch is full). Batches run one
at a time, so a batch function that holds a model never runs concurrently with itself. If the batch function
raises, every request of that batch gets the exception; the batcher keeps serving later requests. Waiters that
were cancelled are dropped before their batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


@dataclass
class BatchStats:
    """Counters for benchmarks and metrics: how many batches ran and how full they were."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    busy_s: float = 0.0
    """Wall time spent inside the batch function (for an engine: time spent decoding)."""

    @property
    def mean_batch_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


class AsyncBatcher(Generic[RequestT, ResultT]):
    """Runs ``batch_fn(requests) -> results`` (same length, same order) over requests submitted concurrently."""

    def __init__(
        self,
        batch_fn: Callable[[list[RequestT]], Awaitable[Sequence[ResultT]]],
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: deque[tuple[RequestT, asyncio.Future[ResultT]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None

    async def submit(self, request: RequestT) -> ResultT:
        """Queue one request and wait for its result (or the exception its batch raised)."""
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        assert self._wakeup is not None
        future: asyncio.Future[ResultT] = loop.create_future()
        self._queue.append((request, future))
        self._wakeup.set()
        return await future

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is not None and not self._worker.done() and self._worker.get_loop() is loop:
            return
        if self._worker is not None and self._worker.get_loop() is not loop:
            # A new event loop (each asyncio.run in tests or a sync wrapper): requests of the old loop are dead.
            # On the same loop (a worker stopped by aclose) the queued requests are still live and stay queued.
            self._queue.clear()
        self._wakeup = asyncio.Event()
        self._worker = loop.create_task(self._serve())

    async def _serve(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._wait_for_more()
            while self._queue:
                await self._run_one_batch()

    async def _wait_for_more(self) -> None:
        """Give late requests up to ``max_wait_s`` to join the batch, but stop waiting once it is full."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._queue) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def _run_one_batch(self) -> None:
        size = min(len(self._queue), self.max_batch_size)
        batch = [self._queue.popleft() for _ in range(size)]
        live = [(request, future) for request, future in batch if not future.cancelled()]
        if not live:
            return
        self._record(len(live))
        started = time.perf_counter()
        try:
            results = await self._batch_fn([request for request, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} requests")
        except Exception as error:  # every waiter of this batch gets it; later batches are unaffected
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        except asyncio.CancelledError:
            # The batch's requests are off the queue: cancel their waiters, or aclose (or the loop shutting down)
            # would leave them awaiting forever.
            _cancel(future for _, future in live)
            if _being_cancelled():
                raise
            return  # the batch function cancelled itself: only this batch is lost, later batches are served
        except BaseException:  # KeyboardInterrupt, SystemExit: stop, but leave no waiter hanging
            _cancel(future for _, future in live)
            raise
        finally:
            self.stats.busy_s += time.perf_counter() - started
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _record(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.requests += size
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        self.stats.batch_sizes.append(size)

    async def aclose(self) -> None:
        """Stop the worker; requests still queued get ``asyncio.CancelledError``."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._queue:
            _, future = self._queue.popleft()
            future.cancel()


def _cancel(futures: Iterable[asyncio.Future[Any]]) -> None:
    for future in futures:
        future.cancel()  # a no-op on futures already done


def _being_cancelled() -> bool:
    """Whether the current task was asked to stop (rather than something it awaited raising CancelledError)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+; before it, every CancelledError counts
    return cancelling is None or cancelling() > 0
