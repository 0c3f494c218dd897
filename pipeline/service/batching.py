"""An asyncio micro-batcher: many concurrent requests, one call to the expensive thing.

Two costs in the service are almost flat in the number of rows: a `predict_proba`
call (a gradient-boosted model costs about the same for 1 row as for 64) and a
database commit (one fsync, whatever the number of rows). Paying them once per
request caps throughput at 1/cost. Paying them once per *batch of concurrent
requests* does not. That is the group commit of databases, applied twice:

* requests `submit` an item and await a future;
* one worker task takes the first queued item, then everything else already queued
  (optionally waiting `max_wait` seconds for more), up to `max_size` rows;
* it runs `process(items)` in its own single thread, so the event loop keeps
  accepting requests (that is what fills the next batch) and calls never overlap;
* each future gets its own result, or - if `process` raised - the exception.

With `max_wait = 0` the batcher adds no latency at low load: a lone request is
processed at once, and batches form by themselves from whatever arrived while the
previous call ran. A failed call fails exactly the requests in its batch, never
others, and never reports success for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from pipeline.errors import ServiceUnavailable

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    size: int
    future: asyncio.Future[Out]


class MicroBatcher(Generic[In, Out]):
    """Collect concurrent submissions and process them in batches on one worker thread.

    `process` receives the items of one batch, in submission order, and must return
    one result per item in the same order. `size_of(item)` is how many rows an item
    counts for against `max_size` (a request with 50 records counts 50); an item is
    never split, so a batch may exceed `max_size` by at most one item.
    """

    def __init__(
        self,
        process: Callable[[list[In]], Sequence[Out]],
        *,
        name: str,
        max_size: int,
        max_wait: float = 0.0,
        size_of: Callable[[In], int] = lambda _item: 1,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"{name}: max_size must be >= 1, got {max_size}")
        if max_wait < 0:
            raise ValueError(f"{name}: max_wait must be >= 0, got {max_wait}")
        self.name = name
        self._process = process
        self._max_size = max_size
        self._max_wait = max_wait
        self._size_of = size_of
        self._queue: deque[_Pending[In, Out]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker on the running loop; call once, from the app's lifespan."""
        if self._task is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Refuse new items, finish every queued one, then stop the worker and its thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, item: In) -> Out:
        """Queue one item and wait for its result (or the exception of its batch)."""
        if self._closing or self._wakeup is None:
            raise ServiceUnavailable(f"{self.name} is not running")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, self._size_of(item), future))
        self._wakeup.set()
        return await future

    def _take(self, size: int, batch: list[_Pending[In, Out]]) -> int:
        while self._queue and size < self._max_size:
            pending = self._queue.popleft()
            batch.append(pending)
            size += pending.size
        return size

    async def _collect(self) -> list[_Pending[In, Out]]:
        """The next batch: what is queued now, plus what arrives within `max_wait`."""
        batch: list[_Pending[In, Out]] = []
        size = self._take(0, batch)
        if self._max_wait > 0 and size < self._max_size and not self._closing:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._max_wait
            assert self._wakeup is not None
            while size < self._max_size and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                size = self._take(size, batch)
        return batch

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            # Only reached with items left if the worker was cancelled: nobody may hang.
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(ServiceUnavailable(f"{self.name} stopped"))

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._collect()
            # A request whose client went away (cancelled) needs no processing.
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(
                    self._executor, self._process, [p.item for p in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(
                        f"{self.name}: process returned {len(results)} results for "
                        f"{len(live)} items"
                    )
            except Exception as error:  # each waiting request gets the error
                log.warning("%s: batch of %d failed: %s", self.name, len(live), error)
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(live, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
