"""A challenger that breaks or crawls never fails nor slows the champion's answer.

The app runs in process (FastAPI's TestClient, with its lifespan) on the real registry:
the champion is `@shadowfail` (version 1) and the challenger `@shadowfail-challenger`
(version 2), both really loaded. Then the challenger's fitted model is swapped for one
that raises or sleeps - the failure under test - and the champion keeps answering.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.config import load_settings
from pipeline.service.app import create_app
from pipeline.service.config import ServiceConfig
from pipeline.store import ScoreStore

from .conftest import TOKEN, Registry, make_repo, sample_records

pytestmark = pytest.mark.slow

ENV = "svcshadowfail"
ALIAS = "shadowfail"
DELAY = 1.0


class Exploding:
    def predict_proba(self, frame: Any) -> Any:
        raise RuntimeError("the challenger exploded")


class Slow:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def predict_proba(self, frame: Any) -> Any:
        time.sleep(DELAY)
        return self.inner.predict_proba(frame)


@pytest.fixture(scope="module")
def app(model_registry: Registry, tmp_path_factory) -> Iterator[tuple[TestClient, Any, str]]:
    folder = tmp_path_factory.mktemp("shadowfail")
    url = f"sqlite:///{folder / 'scores.db'}"
    root = make_repo(folder / "repo", env=ENV, store_url=url, alias=ALIAS)
    model_registry.move_alias(ALIAS, 1)
    model_registry.move_alias(f"{ALIAS}-challenger", 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", model_registry.tracking_uri)
        settings = load_settings(root)
        config = ServiceConfig(api_token=TOKEN, reload_interval=0, shadow_max_backlog=10)
        service = create_app(settings, config)
        with TestClient(service) as client:
            # An alias loads in the background once the app has started (a registry
            # that is down must not delay listening): wait for both models.
            state = service.state.service
            _wait(lambda: state.models.current is not None, timeout=60)
            _wait(lambda: state.challenger_model is not None, timeout=60)
            yield client, state, url


def _metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _shadow_rows(url: str) -> int:
    store = ScoreStore(url)
    try:
        return store.count_scores(environment=ENV, shadow=True)
    finally:
        store.dispose()


def _wait(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_raising_challenger_costs_a_metric_not_an_answer(app, model_registry) -> None:
    client, state, url = app
    real = state.challenger.current
    assert (state.models.current.version, real.version) == ("1", "2")
    state.challenger.current = dataclasses.replace(real, model=Exploding())
    try:
        records = sample_records(model_registry, 4, start=900)
        answer = client.post("/v1/score", json=records)
        assert answer.status_code == 200, answer.text
        assert {item["model_version"] for item in answer.json()} == {"1"}
        failures = 'crispml_shadow_failures_total{stage="predict"}'
        _wait(lambda: _metric(client, failures) == 4)
        assert _shadow_rows(url) == 0
        again = client.post("/v1/score", json=records[0])  # and again: still answered
        assert again.status_code == 200
        _wait(lambda: _metric(client, failures) == 5)
    finally:
        state.challenger.current = real


def test_a_slow_challenger_neither_delays_answers_nor_queues_without_end(
    app, model_registry
) -> None:
    client, state, url = app
    real = state.challenger.current
    state.challenger.current = dataclasses.replace(real, model=Slow(real.model))
    before = _shadow_rows(url)
    try:
        took = []
        for start in (910, 915, 920):  # 5 rows each; the backlog holds 10 rows
            started = time.perf_counter()
            answer = client.post("/v1/score", json=sample_records(model_registry, 5, start=start))
            took.append(time.perf_counter() - started)
            assert answer.status_code == 200 and answer.json()[0]["model_version"] == "1"
        # Each answer came well before the challenger's first score (DELAY seconds).
        assert max(took) < DELAY / 2, took
        dropped = 'crispml_shadow_failures_total{stage="dropped"}'
        assert _metric(client, dropped) == 5
        assert _metric(client, "crispml_shadow_backlog_rows") == 10
        _wait(lambda: _shadow_rows(url) == before + 10)  # the accepted ones do get stored
        _wait(lambda: _metric(client, "crispml_shadow_backlog_rows") == 0)
    finally:
        state.challenger.current = real


def test_a_group_commit_that_fails_on_shadow_rows_still_stores_the_answers(app) -> None:
    """Shadow rows share the champion's transaction; should they break it, the answered
    rows are committed alone and only the shadow's waiter hears of the failure."""
    import sqlalchemy as sa

    from pipeline.service.scoring import ShadowNotStored
    from pipeline.store import new_score_id, shadow_score_id, utcnow

    _client, state, url = app
    answered = {
        "score_id": new_score_id(),
        "record_id": "commit-test",
        "frame": None,
        "score": 0.4,
        "decision": 0,
        "threshold": 0.5,
        "model_name": state.models.current.name,
        "model_version": "1",
        "run_id": "r",
        "git_commit": "c",
        "environment": ENV,
        "channel": "api",
        "source": "test",
        "scored_at": utcnow(),
        "shadow": False,
        "shadow_of": None,
    }
    shadow_row = {
        **answered,
        "score_id": shadow_score_id(answered["score_id"], "2"),
        "model_version": "2",
        "shadow": True,
        "shadow_of": answered["score_id"],
    }
    real_insert = state.store.insert_scores

    def refuse_shadows(rows, connection=None):
        if any(row["shadow"] for row in rows):
            raise sa.exc.OperationalError("INSERT", {}, Exception("shadow rows refused"))
        return real_insert(rows, connection)

    state.store.insert_scores = refuse_shadows
    try:
        results = state.scoring._commit([[answered], [shadow_row]])
        assert results[0] == 1 and isinstance(results[1], ShadowNotStored)
        with pytest.raises(sa.exc.OperationalError):  # only shadows: the error is theirs
            state.scoring._commit([[shadow_row]])
    finally:
        del state.store.insert_scores
    store = ScoreStore(url)
    try:
        assert store.get_score(answered["score_id"])["record_id"] == "commit-test"
        assert store.get_score(shadow_row["score_id"]) is None
    finally:
        store.dispose()


def test_a_challenger_that_fails_to_load_is_dropped_and_not_reloaded_every_poll(
    app, model_registry
) -> None:
    import asyncio

    from pipeline.service.model import ModelLoader, ModelManager, ModelRef

    _client, state, _url = app
    alias = f"{ALIAS}-broken"
    model_registry.move_alias(alias, 2)
    ref = ModelRef(
        "alias",
        f"models:/{model_registry.model_name}@{alias}",
        model_registry.model_name,
        alias=alias,
    )
    loads: list[str] = []

    def refuse_version_2(model) -> None:
        loads.append(model.version)
        if model.version == "2":
            raise ValueError("version 2 failed its warm-up")

    failures: list[Exception] = []
    changes: list[Any] = []
    manager = ModelManager(
        ModelLoader(state.settings, ref, warm_up=refuse_version_2),
        optional=True,
        on_failure=failures.append,
        on_change=changes.append,
    )

    async def scenario() -> None:
        with pytest.raises(ValueError, match="warm-up"):
            await manager.refresh()
        assert manager.current is None and len(failures) == 1
        again = await manager.refresh()  # the same broken version: not loaded again
        assert again.changed is False and loads == ["2"] and len(failures) == 1
        model_registry.move_alias(alias, 1)  # the alias moves: loaded
        moved = await manager.refresh()
        assert moved.changed and manager.current.version == "1"
        from mlflow import MlflowClient

        # Nobody holds the alias any more: no challenger.
        uri = model_registry.tracking_uri
        registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
        registry.delete_registered_model_alias(model_registry.model_name, alias)
        gone = await manager.refresh()
        assert gone.changed and gone.current is None and manager.current is None
        assert changes[-1] is None

    asyncio.run(scenario())
