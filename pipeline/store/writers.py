"""Store scored chunks in the background while the next ones are scored.

A score stage used to alternate: score a chunk, then wait for the database to take it,
then score the next. Waiting on the database is most of a chunk's time, and both
drivers release the GIL while they wait, so the stage scores chunk n+1 while chunk n
is stored. PostgreSQL takes a second chunk at once on another connection: the server
spends most of a COPY maintaining the five indexes of `scores`, in one server process
per connection. On two cores, one connection stored about 110,000 rows/s, two about
140,000, three no more than one (bench/store_throughput.py, path `writers`). SQLite has
one writer, so it gets one thread.

Each chunk is still one transaction of its own (`ScoreStore.store_batch_frame`), so
what a crash leaves behind is what it left before: whole chunks, which a re-run finds
stored and does not add again. Chunks may commit out of order; the answer of each
names the ids in the store, whichever order they landed in.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Any

import pandas as pd

# Connections that write at once, by dialect (see the module docstring for the figures).
WRITERS = {"sqlite": 1, "postgresql": 2}


class BatchWriters:
    """Up to `writers` chunks stored at once, each in its own transaction.

    `submit` blocks once `writers` chunks wait beyond the ones being written, so a
    stage that scores faster than the database stores holds a bounded number of chunks
    in memory. Leaving the `with` block waits for every submitted chunk; leaving it by
    an error first drops the chunks not started yet.
    """

    def __init__(self, store: Any, writers: int | None = None) -> None:
        self.store = store
        self.writers = writers or WRITERS.get(store.dialect, 1)
        self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="crispml-store")
        self._room = threading.BoundedSemaphore(2 * self.writers)

    def submit(
        self, scored: pd.DataFrame, lineage: Mapping[str, Any], scored_at: datetime
    ) -> Future[tuple[int, list[str]]]:
        """Queue one chunk; its future answers as `store_batch_frame` does."""
        lineage = dict(lineage)  # the caller moves on to the next frame's lineage
        self._room.acquire()
        try:
            future = self._pool.submit(self.store.store_batch_frame, scored, lineage, scored_at)
        except BaseException:
            self._room.release()
            raise
        future.add_done_callback(lambda _: self._room.release())
        return future

    def __enter__(self) -> BatchWriters:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=kind is not None)
