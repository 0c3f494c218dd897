"""`ScoringService` driven directly: validate, score and store without HTTP or a test client.

A real SQLite score store and the repository's data contract; the model is a stand-in
that scores a constant and counts its calls, so no registry is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline.config import load_settings
from pipeline.service.config import ServiceConfig
from pipeline.service.contract import record_schema
from pipeline.service.metrics import ServiceMetrics
from pipeline.service.model import ServingModel
from pipeline.service.scoring import (
    API_CHANNEL,
    RecordsRefused,
    ScoringService,
    ScoringUnavailable,
)
from pipeline.store import ScoreStore, shadow_score_id, utcnow

from .conftest import make_repo

ENV = "svcscoring"
T = TypeVar("T")


class _Constant:
    """Scores every record `value`; counts the rows of each call."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls: list[int] = []

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(frame))
        return np.tile([1 - self.value, self.value], (len(frame), 1))


def _serving(version: str, model: _Constant, threshold: float = 0.5) -> ServingModel:
    return ServingModel(
        model=model,
        name="fraud",
        version=version,
        run_id=f"run-{version}",
        threshold=threshold,
        git_commit=f"commit-{version}",
        uri=f"test:{version}",
        loaded_at=utcnow(),
    )


@dataclass
class _Holder:
    """What a `ModelManager` offers the scoring path: the current model, or why none."""

    current: ServingModel | None
    last_error: str | None = None


@dataclass
class Parts:
    service: ScoringService
    store: ScoreStore
    champion: _Constant
    record: dict[str, Any]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    url = f"sqlite:///{tmp_path / 'scores.db'}"
    settings = load_settings(make_repo(tmp_path / "repo", env=ENV, store_url=url))
    store = ScoreStore(url)
    store.migrate()
    schema = record_schema(settings.contract, settings.model_inputs)
    champion = _Constant(0.3)
    service = ScoringService(
        schema=schema,
        store=store,
        metrics=ServiceMetrics(),
        config=ServiceConfig(store_timeout=5.0),
        environment=ENV,
        pseudonymise=list,
        models=_Holder(_serving("1", champion)),
    )
    try:
        yield Parts(service, store, champion, dict(schema.example))
    finally:
        store.dispose()


def _running(service: ScoringService, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` with the service's batchers started, and stop them (draining) after."""

    async def main() -> T:
        await service.start()
        try:
            return await work()
        finally:
            await service.stop()

    return asyncio.run(main())


def _records(parts: Parts, *ids: str) -> list[dict[str, Any]]:
    return [{**parts.record, "transaction_id": record_id} for record_id in ids]


def test_records_are_scored_in_order_and_every_answer_is_a_stored_score(parts: Parts) -> None:
    records = parts.service.validate(_records(parts, "tx-1", "tx-2", "tx-3"))
    results = _running(parts.service, lambda: parts.service.score(records))
    assert [r["record_id"] for r in results] == ["tx-1", "tx-2", "tx-3"]
    assert {(r["score"], r["decision"], r["model_version"]) for r in results} == {(0.3, 0, "1")}
    assert parts.champion.calls == [3]  # one batched call for the request
    for result in results:
        stored = parts.store.get_score(result["score_id"])
        assert stored is not None, result
        assert (stored["record_id"], stored["score"]) == (result["record_id"], 0.3)
        assert (stored["run_id"], stored["git_commit"]) == ("run-1", "commit-1")
        assert (stored["environment"], stored["channel"], stored["shadow"]) == (
            ENV,
            API_CHANNEL,
            False,
        )
    assert parts.store.count_scores(environment=ENV) == 3


def test_validate_names_field_rule_and_value_as_the_api_does(parts: Parts) -> None:
    good, bad = _records(parts, "ok", "bad")
    bad["V1"] = 1e9
    with pytest.raises(RecordsRefused) as refused:
        parts.service.validate([good, bad])
    (problem,) = refused.value.problems
    assert (problem["field"], problem["rule"], problem["value"]) == (
        "[1].V1",
        "less_than_equal",
        1e9,
    )
    assert problem["loc"][0] == "body"
    one = parts.service.validate(good)  # one record, not a list: a list of one
    assert len(one) == 1 and one[0].model_dump(by_alias=True)["transaction_id"] == "ok"


def test_a_repeated_unique_id_refuses_the_request_before_the_model_runs(parts: Parts) -> None:
    records = parts.service.validate(_records(parts, "same", "other", "same"))

    async def score() -> None:
        await parts.service.score(records)

    with pytest.raises(RecordsRefused) as refused:
        _running(parts.service, score)
    (problem,) = refused.value.problems
    assert (problem["field"], problem["rule"], problem["value"]) == (
        "[2].transaction_id",
        "duplicate_id",
        "same",
    )
    assert parts.champion.calls == [] and parts.store.count_scores(environment=ENV) == 0


def test_without_a_model_nothing_is_scored_and_the_reason_is_given(parts: Parts) -> None:
    parts.service.models = _Holder(None, "the registry does not answer")
    records = parts.service.validate(_records(parts, "tx-1"))

    async def score() -> None:
        await parts.service.score(records)

    with pytest.raises(ScoringUnavailable, match="no model is loaded: the registry does not"):
        _running(parts.service, score)
    assert parts.store.count_scores(environment=ENV) == 0


def test_a_write_the_store_does_not_confirm_is_never_answered(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(rows: Any, connection: Any = None) -> int:
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(parts.store, "insert_scores", refuse)
    records = parts.service.validate(_records(parts, "tx-1"))

    async def score() -> None:
        await parts.service.score(records)

    with pytest.raises(ScoringUnavailable, match="did not confirm the write"):
        _running(parts.service, score)
    failures = parts.service.metrics.registry.get_sample_value("crispml_store_failures_total")
    assert failures == 1.0
    assert parts.champion.calls == [1]  # scored, but not answered


def test_the_challenger_scores_in_shadow_and_its_rows_link_to_the_answer(parts: Parts) -> None:
    challenger = _Constant(0.8)
    parts.service.challenger = _Holder(_serving("2", challenger, threshold=0.7))
    records = parts.service.validate(_records(parts, "tx-1", "tx-2"))
    # `stop` waits for the shadow work of answered requests before the last commit.
    results = _running(parts.service, lambda: parts.service.score(records))
    assert {r["model_version"] for r in results} == {"1"}  # only the champion answers
    assert challenger.calls == [2]
    for result in results:
        shadow = parts.store.get_score(shadow_score_id(result["score_id"], "2"))
        assert shadow is not None, result
        assert (shadow["shadow"], shadow["shadow_of"]) == (True, result["score_id"])
        assert (shadow["score"], shadow["decision"], shadow["threshold"]) == (0.8, 1, 0.7)
        assert (shadow["model_version"], shadow["record_id"]) == ("2", result["record_id"])
    assert parts.store.count_scores(environment=ENV) == 4
