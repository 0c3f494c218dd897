"""Concurrent promotions of one alias: no history event is ever lost.

Several threads, then several processes, promote the same alias at once, against one
MLflow registry and one store (SQLite always, PostgreSQL when CRISPML_TEST_DATABASE_URL
names one). Each promoter does what the promote job does: read the holder, decide, move
with `expected` set to what it read, and on `AliasMoved` read again and retry. A second
run passes ANY_HOLDER (the replay's way). Either way the history must hold every
promotion exactly once, each event's `previous` must be the version the event before
left, and the history must replay to the registry's holder.

Before the history moved into the store, the same threads lost events: each appended to
a JSON tag it had read before another thread's write.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pipeline import registry
from tests import test_store
from tests.test_store import StoreTarget

# The store fixtures of test_store.py: SQLite, and PostgreSQL when one is named.
store_target = test_store.store_target
store = test_store.store

NAME = "crispml-race"
ALIAS = "prod"
VERSIONS = 4
MOVES_EACH = 3


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def registry_uri(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    client.create_registered_model(NAME)
    for _ in range(VERSIONS):
        client.create_model_version(NAME, source=str(tmp_path / "model"))
    return uri


def _promote(client: Any, history: Any, worker: str, compare: bool) -> dict[str, int]:
    """One promoter: MOVES_EACH moves, each decided against the holder it read."""
    moves = conflicts = 0
    for step in range(MOVES_EACH):
        version = str((int(worker.rsplit("-", 1)[1]) + step) % VERSIONS + 1)
        while True:
            holder = registry.alias_holder(client, NAME, ALIAS)
            seen = None if holder is None else str(holder.version)
            try:
                registry.move_alias(
                    client,
                    history,
                    NAME,
                    ALIAS,
                    version,
                    reason=f"{worker} step {step}",
                    actor=worker,
                    expected=seen if compare else registry.ANY_HOLDER,
                )
            except registry.AliasMoved:
                conflicts += 1
                continue
            moves += 1
            break
    return {"moves": moves, "conflicts": conflicts}


def _assert_nothing_lost(client: Any, history: Any, workers: list[str]) -> None:
    events = registry.alias_history(client, history, NAME, ALIAS)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["kind"] for e in events} == {"move"}, "a move went unrecorded"
    for worker in workers:
        mine = [e["reason"] for e in events if e["actor"] == worker]
        assert mine == [f"{worker} step {s}" for s in range(MOVES_EACH)], worker
    assert len(events) == len(workers) * MOVES_EACH
    previous = None
    for event in events:
        assert event["previous"] == previous, event
        previous = event["version"]
    holder = registry.alias_holder(client, NAME, ALIAS)
    assert previous == str(holder.version), "the history does not replay to the holder"


@pytest.mark.parametrize("compare", [True, False], ids=["compare-and-set", "any-holder"])
def test_threads_promoting_one_alias_lose_no_event(
    registry_uri: str, store: Any, compare: bool
) -> None:
    workers = [f"thread-{i}" for i in range(6)]
    barrier = threading.Barrier(len(workers))

    def run(worker: str) -> dict[str, int]:
        client = _client(registry_uri)
        barrier.wait(timeout=60)
        return _promote(client, store, worker, compare)

    with ThreadPoolExecutor(len(workers)) as pool:
        results = list(pool.map(run, workers))
    assert all(r["moves"] == MOVES_EACH for r in results)
    if not compare:
        assert all(r["conflicts"] == 0 for r in results)
    _assert_nothing_lost(_client(registry_uri), store, workers)


def _process(
    uri: str, target: StoreTarget, worker: str, compare: bool, barrier: Any, out: Any
) -> None:
    """One promoter in a process of its own, as two CI jobs would be."""
    try:
        client = _client(uri)
        history = target.open()
        barrier.wait(timeout=120)
        out.put((worker, _promote(client, history, worker, compare)))
        history.dispose()
    except Exception as error:  # reported to the test, which names it
        out.put((worker, f"{type(error).__name__}: {error}"))


@pytest.mark.slow
@pytest.mark.parametrize("compare", [True, False], ids=["compare-and-set", "any-holder"])
def test_processes_promoting_one_alias_lose_no_event(
    registry_uri: str, store: Any, store_target: StoreTarget, compare: bool
) -> None:
    context = mp.get_context("spawn")
    workers = [f"process-{i}" for i in range(4)]
    barrier, out = context.Barrier(len(workers)), context.Queue()
    processes = [
        context.Process(
            target=_process, args=(registry_uri, store_target, w, compare, barrier, out)
        )
        for w in workers
    ]
    for process in processes:
        process.start()
    results = dict(out.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert all(isinstance(r, dict) and r["moves"] == MOVES_EACH for r in results.values()), results
    _assert_nothing_lost(_client(registry_uri), store, workers)
