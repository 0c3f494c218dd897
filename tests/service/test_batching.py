"""The micro-batcher behind inference and the group commit: batching, ordering, failure."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pipeline.errors import ServiceUnavailable
from pipeline.service.batching import MicroBatcher


class Recorder:
    """A process function that records its batches and can be told to block or fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_when = lambda batch: False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(5)
        self.batches.append(list(items))
        time.sleep(self.delay)
        if self.fail_when(items):
            raise RuntimeError(f"batch {items} failed")
        return [item * 10 for item in items]


def test_concurrent_submissions_share_calls_and_get_their_own_results() -> None:
    recorder = Recorder(delay=0.01)

    async def main() -> list[int]:
        batcher = MicroBatcher(recorder, name="t", max_size=1000)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(200)))
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results == [i * 10 for i in range(200)]
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(200))
    # 200 requests arrived together: they must not have cost 200 calls.
    assert len(recorder.batches) < 20


def test_a_lone_request_is_not_delayed_without_max_wait() -> None:
    recorder = Recorder()

    async def main() -> float:
        batcher = MicroBatcher(recorder, name="t", max_size=10)
        await batcher.start()
        await batcher.submit(0)  # warm the thread
        started = time.perf_counter()
        await batcher.submit(1)
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    assert asyncio.run(main()) < 0.05


def test_max_size_bounds_a_batch_by_rows() -> None:
    recorder = Recorder()

    async def main() -> None:
        batcher = MicroBatcher(recorder, name="t", max_size=5, size_of=lambda item: 2)
        recorder.gate.clear()  # hold the worker so that everything queues
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(9)]
        await asyncio.sleep(0.05)
        recorder.gate.set()
        await asyncio.gather(*tasks)
        await batcher.stop()

    asyncio.run(main())
    # Each item counts 2 rows; a batch stops once it reaches 5 rows: 3 items (6 rows).
    assert all(len(batch) <= 3 for batch in recorder.batches)
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(9))


def test_max_wait_gathers_requests_that_arrive_later() -> None:
    recorder = Recorder()

    async def main() -> None:
        batcher = MicroBatcher(recorder, name="t", max_size=100, max_wait=0.2)
        await batcher.start()

        async def late(i: int) -> int:
            await asyncio.sleep(0.02 * i)
            return await batcher.submit(i)

        await asyncio.gather(*(late(i) for i in range(5)))
        await batcher.stop()

    asyncio.run(main())
    assert recorder.batches == [[0, 1, 2, 3, 4]]


def test_a_failed_batch_fails_exactly_its_requests() -> None:
    recorder = Recorder()
    recorder.fail_when = lambda batch: 13 in batch

    async def main() -> tuple[list, list]:
        batcher = MicroBatcher(recorder, name="t", max_size=100)
        recorder.gate.clear()
        await batcher.start()
        first = [asyncio.create_task(batcher.submit(i)) for i in (1, 13, 2)]
        await asyncio.sleep(0.05)  # the worker holds [1]; 13 and 2 queue together
        recorder.gate.set()
        first_results = await asyncio.gather(*first, return_exceptions=True)
        later = await asyncio.gather(batcher.submit(3), batcher.submit(4))
        await batcher.stop()
        return first_results, later

    first_results, later = asyncio.run(main())
    failed_batch = next(b for b in recorder.batches if 13 in b)
    for item, result in zip((1, 13, 2), first_results, strict=True):
        if item in failed_batch:
            assert isinstance(result, RuntimeError)
        else:
            assert result == item * 10
    assert later == [30, 40]  # the batcher keeps working after a failure


def test_stop_drains_queued_items_then_refuses_new_ones() -> None:
    recorder = Recorder(delay=0.005)

    async def main() -> list[int]:
        batcher = MicroBatcher(recorder, name="t", max_size=3)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(10)]
        await asyncio.sleep(0)
        await batcher.stop()
        results = await asyncio.gather(*tasks)
        with pytest.raises(ServiceUnavailable):
            await batcher.submit(99)
        return results

    assert asyncio.run(main()) == [i * 10 for i in range(10)]


def test_a_cancelled_request_is_skipped() -> None:
    recorder = Recorder()

    async def main() -> None:
        batcher = MicroBatcher(recorder, name="t", max_size=100)
        recorder.gate.clear()
        await batcher.start()
        blocker = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.02)
        gone.cancel()
        recorder.gate.set()
        assert await kept == 20 and await blocker == 0
        await batcher.stop()

    asyncio.run(main())
    assert 1 not in [i for batch in recorder.batches for i in batch]


def test_wrong_result_count_is_an_error_not_a_mismatch() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda items: items[:-1], name="t", max_size=10)
        await batcher.start()
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            await batcher.submit(1)
        await batcher.stop()

    asyncio.run(main())
