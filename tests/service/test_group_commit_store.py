"""The group commit against real stores (SQLite, and PostgreSQL when configured).

What the service relies on: many concurrent requests' rows go into one transaction,
every request whose commit succeeded has all its rows stored, and a failed commit
stores none of the rows of any request in it (so none of them may answer 200).
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.service.batching import MicroBatcher
from pipeline.store import ScoreStore, new_score_id, utcnow

from .conftest import delete_environment, unique_env


def _row(environment: str, record: str, **overrides) -> dict:
    return {
        "score_id": new_score_id(),
        "record_id": record,
        "frame": None,
        "score": 0.25,
        "decision": 0,
        "threshold": 0.5,
        "model_name": "m",
        "model_version": "1",
        "run_id": "r",
        "git_commit": "c",
        "environment": environment,
        "channel": "api",
        "source": "test",
        "scored_at": utcnow(),
        **overrides,
    }


@pytest.fixture
def store(store_url: str):
    environment = unique_env("gc")
    target = ScoreStore(store_url)
    target.migrate()
    yield target, environment
    delete_environment(store_url, environment)
    target.dispose()


def _writer(target: ScoreStore, commits: list[int], **kwargs) -> MicroBatcher:
    def commit(batches: list[list[dict]]) -> list[int]:
        rows = [row for batch in batches for row in batch]
        target.insert_scores(rows)
        commits.append(len(rows))
        return [len(batch) for batch in batches]

    return MicroBatcher(
        commit, name="writer", max_size=kwargs.pop("max_size", 500), size_of=len, **kwargs
    )


def test_concurrent_requests_are_all_stored_in_few_transactions(store) -> None:
    target, environment = store
    commits: list[int] = []

    async def main() -> None:
        writer = _writer(target, commits)
        await writer.start()
        requests = [[_row(environment, f"r{i}-{j}") for j in range(i % 3 + 1)] for i in range(300)]
        results = await asyncio.gather(*(writer.submit(rows) for rows in requests))
        await writer.stop()
        assert results == [len(rows) for rows in requests]

    asyncio.run(main())
    expected = sum(i % 3 + 1 for i in range(300))
    assert target.count_scores(environment=environment) == expected
    assert sum(commits) == expected
    assert len(commits) < 100, "concurrent requests did not share transactions"


def test_a_failed_commit_stores_nothing_of_any_request_in_it(store) -> None:
    target, environment = store
    commits: list[int] = []

    async def main() -> list:
        # max_wait gathers the three requests into one transaction.
        writer = _writer(target, commits, max_wait=0.2)
        await writer.start()
        good = [_row(environment, "good-1"), _row(environment, "good-2")]
        broken = [_row(environment, "broken", score=None)]  # score is NOT NULL
        other = [_row(environment, "good-3")]
        outcome = await asyncio.gather(
            writer.submit(good),
            writer.submit(broken),
            writer.submit(other),
            return_exceptions=True,
        )
        after = await writer.submit([_row(environment, "after")])
        await writer.stop()
        return [*outcome, after]

    outcome = asyncio.run(main())
    assert all(isinstance(result, Exception) for result in outcome[:3]), outcome
    assert outcome[3] == 1
    frame = target.scores_with_labels(environment, labeled_only=False)
    assert sorted(frame["record_id"]) == ["after"]


def test_api_rows_keep_their_lineage_and_read_back(store) -> None:
    target, environment = store
    row = _row(environment, "lineage", score=0.75, decision=1, model_version="7")
    assert target.insert_scores([row]) == 1
    stored = target.get_score(row["score_id"])
    assert stored is not None
    for key in (
        "record_id",
        "score",
        "decision",
        "threshold",
        "model_version",
        "run_id",
        "git_commit",
        "environment",
        "channel",
        "source",
    ):
        assert stored[key] == row[key], key
    assert stored["frame"] is None and stored["label"] is None
