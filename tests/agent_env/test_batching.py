"""AsyncBatcher: concurrent submits coalesce into ordered batch calls, and failures stay inside their batch."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_env.batching import AsyncBatcher


class Recorder:
    """A batch function that records every batch it sees and answers each request with ``request * 10``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    async def __call__(self, requests: list[int]) -> list[int]:
        self.batches.append(list(requests))
        await asyncio.sleep(self.delay_s)
        return [request * 10 for request in requests]


def test_results_come_back_in_request_order() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert asyncio.run(main()) == [i * 10 for i in range(20)]
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(20))


def test_concurrent_submits_coalesce_into_one_batch() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder, max_batch_size=64)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(i) for i in range(50)))

    asyncio.run(main())
    assert recorder.batches == [list(range(50))]
    assert (batcher.stats.batches, batcher.stats.requests, batcher.stats.largest_batch) == (1, 50, 50)
    assert batcher.stats.batch_sizes == [50]
    assert batcher.stats.mean_batch_size == 50.0


def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = AsyncBatcher(recorder)

    async def late(i: int) -> int:
        await asyncio.sleep(0.01)  # after the first batch started
        return await batcher.submit(i)

    async def main() -> list[int]:
        return await asyncio.gather(batcher.submit(0), *(late(i) for i in range(1, 6)))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert recorder.batches == [[0], [1, 2, 3, 4, 5]]


def test_max_batch_size_is_respected() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder, max_batch_size=4)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batcher.stats.largest_batch == 4
    assert batcher.stats.batch_sizes == [4, 4, 2]


def test_max_wait_gathers_stragglers() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder, max_wait_s=0.2)

    async def straggler(i: int, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        return await batcher.submit(i)

    async def main() -> list[int]:
        return list(await asyncio.gather(straggler(0, 0.0), straggler(1, 0.05), straggler(2, 0.1)))

    assert asyncio.run(main()) == [0, 10, 20]
    assert recorder.batches == [[0, 1, 2]]


def test_without_max_wait_stragglers_go_in_later_batches() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder)

    async def straggler(i: int, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        return await batcher.submit(i)

    async def main() -> None:
        await asyncio.gather(straggler(0, 0.0), straggler(1, 0.05))

    asyncio.run(main())
    assert recorder.batches == [[0], [1]]


def test_max_wait_ends_early_once_the_batch_is_full() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder, max_batch_size=4, max_wait_s=3.0)

    async def straggler(i: int) -> int:
        await asyncio.sleep(0.05)
        return await batcher.submit(i)

    async def main() -> list[int]:
        return await asyncio.gather(batcher.submit(0), *(straggler(i) for i in range(1, 4)))

    start = time.perf_counter()
    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert time.perf_counter() - start < 1.5  # the batch filled at 0.05 s: no waiting out the 3 s
    assert recorder.batches == [[0, 1, 2, 3]]


def test_an_exception_reaches_only_its_batch() -> None:
    async def batch_fn(requests: list[int]) -> list[int]:
        if 3 in requests:
            raise KeyError("boom")
        return [request * 10 for request in requests]

    batcher = AsyncBatcher(batch_fn, max_batch_size=4)

    async def main() -> tuple[list[int | BaseException], list[int]]:
        first = await asyncio.gather(*(batcher.submit(i) for i in range(8)), return_exceptions=True)
        later = await asyncio.gather(*(batcher.submit(i) for i in range(10, 13)))
        return first, later

    first, later = asyncio.run(main())
    assert all(isinstance(result, KeyError) for result in first[:4])  # the batch holding request 3
    assert first[4:] == [40, 50, 60, 70]
    assert later == [100, 110, 120]


def test_wrong_result_count_is_an_error_for_that_batch() -> None:
    async def batch_fn(requests: list[int]) -> list[int]:
        return [0] * (len(requests) + 1)

    batcher = AsyncBatcher(batch_fn)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))

    with pytest.raises(RuntimeError, match="returned 4 results for 3 requests"):
        asyncio.run(main())


def test_cancelled_waiters_are_skipped() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = AsyncBatcher(recorder)

    async def main() -> list[int]:
        busy = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # batch [0] is running; the next ones queue behind it
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(1, 5)]
        await asyncio.sleep(0)
        queued[1].cancel()
        queued[3].cancel()
        done = list(await asyncio.gather(busy, queued[0], queued[2]))
        assert queued[1].cancelled()
        return done

    assert asyncio.run(main()) == [0, 10, 30]
    assert recorder.batches == [[0], [1, 3]]
    assert batcher.stats.requests == 3


def test_a_waiter_cancelled_while_its_batch_runs_does_not_disturb_the_others() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = AsyncBatcher(recorder)

    async def main() -> list[int]:
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        tasks[1].cancel()
        return list(await asyncio.gather(tasks[0], tasks[2]))

    assert asyncio.run(main()) == [0, 20]


def test_works_across_successive_event_loops() -> None:
    recorder = Recorder()
    batcher = AsyncBatcher(recorder)

    async def main(offset: int) -> list[int]:
        return await asyncio.gather(*(batcher.submit(offset + i) for i in range(3)))

    assert asyncio.run(main(0)) == [0, 10, 20]
    assert asyncio.run(main(100)) == [1000, 1010, 1020]
    assert recorder.batches == [[0, 1, 2], [100, 101, 102]]


def test_aclose_cancels_queued_and_running_requests_and_the_batcher_restarts() -> None:
    release = asyncio.Event()
    seen: list[list[int]] = []

    async def batch_fn(requests: list[int]) -> list[int]:
        seen.append(list(requests))
        if requests[0] < 100:
            await release.wait()  # never set: the batch is still running when aclose comes
        return requests

    batcher = AsyncBatcher(batch_fn, max_batch_size=2)

    async def main() -> int:
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
        await asyncio.sleep(0.01)  # batch [0, 1] running, [2, 3] queued
        await batcher.aclose()
        # Every waiter ends (cancelled), none hangs: the running batch's waiters included.
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
        return await asyncio.wait_for(batcher.submit(100), timeout=5)  # a fresh worker serves new requests

    assert asyncio.run(main()) == 100
    assert seen == [[0, 1], [100]]


def test_a_batch_function_cancelling_itself_loses_only_its_batch() -> None:
    async def batch_fn(requests: list[int]) -> list[int]:
        if requests == [0]:
            raise asyncio.CancelledError  # e.g. an inner task it awaited was cancelled
        return requests

    batcher = AsyncBatcher(batch_fn, max_batch_size=1)

    async def main() -> list[int | BaseException]:
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)

    results = asyncio.run(main())
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [1, 2]


def test_sync_batch_function_results_may_be_any_sequence() -> None:
    async def batch_fn(requests: list[str]) -> tuple[str, ...]:
        return tuple(request.upper() for request in requests)

    batcher = AsyncBatcher(batch_fn)

    async def main() -> list[str]:
        return list(await asyncio.gather(batcher.submit("a"), batcher.submit("b")))

    assert asyncio.run(main()) == ["A", "B"]


@pytest.mark.parametrize(
    ("options", "message"), [({"max_batch_size": 0}, "max_batch_size"), ({"max_wait_s": -1}, "max_wait_s")]
)
def test_invalid_options(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AsyncBatcher(Recorder(), **options)  # type: ignore[arg-type]
