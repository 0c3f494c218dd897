"""8 concurrent clients x 500 requests: exactly 4,000 answered scores, exactly 4,000 stored.

Run against SQLite (WAL) and against PostgreSQL, through the same service code.
"""

from __future__ import annotations

import threading

import httpx
import pytest
import sqlalchemy as sa

from pipeline.store import ScoreStore
from pipeline.store.schema import scores

from .conftest import TOKEN, Registry, Server, delete_environment, make_repo, unique_env

pytestmark = pytest.mark.slow

CLIENTS = 8
REQUESTS = 500


def test_every_answered_score_is_stored_exactly_once(
    store_url: str, model_registry: Registry, tmp_path
) -> None:
    environment = unique_env("conc")
    root = make_repo(tmp_path / "repo", env=environment, store_url=store_url)
    server = Server(
        root,
        model_registry,
        env_vars={
            "CRISPML_API_TOKEN": TOKEN,
            "CRISPML_SERVICE_RELOAD_INTERVAL": "0",
        },
    )
    records = [item["record"] for item in model_registry.records]
    answers: list[list[tuple[int, str | None]]] = [[] for _ in range(CLIENTS)]

    def client(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(REQUESTS):
                record = records[(index * REQUESTS + i) % len(records)]
                answer = http.post("/v1/score", json=record)
                score_id = answer.json().get("score_id") if answer.status_code == 200 else None
                answers[index].append((answer.status_code, score_id))

    try:
        server.start().wait_ready()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=server.url) as http:
            metrics = http.get("/metrics").text
    finally:
        exit_code = server.stop()
    # uvicorn finishes in-flight requests and the lifespan (which drains the batchers),
    # then re-raises SIGTERM so the exit status says why it stopped.
    assert exit_code in (0, -15), server.log()
    assert "Application shutdown complete" in server.log(), server.log()
    flat = [answer for per_client in answers for answer in per_client]
    assert len(flat) == CLIENTS * REQUESTS
    assert {status for status, _ in flat} == {200}
    answered = {score_id for _, score_id in flat}
    assert len(answered) == CLIENTS * REQUESTS
    store = ScoreStore(store_url)
    try:
        assert store.count_scores(environment=environment) == CLIENTS * REQUESTS
        with store.engine.connect() as conn:
            stored = set(
                conn.execute(
                    sa.select(scores.c.score_id).where(scores.c.environment == environment)
                ).scalars()
            )
        assert stored == answered
    finally:
        store.dispose()
        if not store_url.startswith("sqlite"):
            delete_environment(store_url, environment)
    # The group commit did group: fewer transactions than requests.
    commits = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("crispml_store_commit_rows_count")
    )
    assert commits < CLIENTS * REQUESTS
