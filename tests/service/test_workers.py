"""`crispml serve --workers 3`: three processes on one port against PostgreSQL.

Each worker has its own model and micro-batchers, so what must hold across them is what
holds for one: every answered score is stored exactly once, /metrics counts all of
them, and a reload reaches every worker. Answers name their worker (`x-crispml-worker`,
its pid); clients open fresh connections often, since a kept-alive connection stays
with the worker that accepted it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from .conftest import (
    PG_ENV,
    TOKEN,
    Registry,
    Server,
    delete_environment,
    make_repo,
    unique_env,
)

pytestmark = pytest.mark.slow

WORKERS = 3
ALIAS = "workers"  # this module's own alias of the shared registry
HEADER = "x-crispml-worker"


def _metric(text: str, line_start: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


@pytest.fixture(scope="module")
def workers(
    model_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str, str]]:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: several workers need a PostgreSQL store")
    environment = unique_env("svcworkers")
    model_registry.move_alias(ALIAS, 1)
    root = make_repo(
        tmp_path_factory.mktemp("workers") / "repo", env=environment, store_url=url, alias=ALIAS
    )
    # No polling: only the admin reload (sent to one worker) can move the others.
    server = Server(
        root,
        model_registry,
        env_vars={"CRISPML_API_TOKEN": TOKEN, "CRISPML_SERVICE_RELOAD_INTERVAL": "0"},
    )
    server.command += ["--workers", str(WORKERS)]
    try:
        server.start().wait_ready(timeout=120)
        _wait_all_ready(server)
        yield server, url, environment
    finally:
        code = server.stop()
        delete_environment(url, environment)
    assert code == 0, server.log()


def _wait_all_ready(server: Server, timeout: float = 120.0) -> None:
    """Until every worker said ready: /readyz on fresh connections, whoever accepts."""
    ready: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < WORKERS and time.monotonic() < deadline:
        answer = httpx.get(server.url + "/readyz", timeout=10)
        if answer.status_code == 200:
            ready.add(answer.headers[HEADER])
        time.sleep(0.05)
    assert len(ready) == WORKERS, f"ready workers: {ready}\n{server.log()}"


def _stored(url: str, environment: str) -> Counter[str]:
    from pipeline.store import make_engine
    from pipeline.store.schema import scores

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(scores.c.score_id).where(scores.c.environment == environment)
            ).all()
    finally:
        engine.dispose()
    return Counter(row[0] for row in rows)


def test_every_answered_score_is_stored_once_and_every_worker_answers(
    workers, model_registry: Registry
) -> None:
    server, url, environment = workers
    records = [item["record"] for item in model_registry.records[:300]]
    answers: list[tuple[int, str, list[dict]]] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        # 8 threads x 10 connections x 5 requests; every third request a batch of 3.
        for connection in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for i in range(5):
                    n = offset * 50 + connection * 5 + i
                    batch = n % 3 == 0
                    body = records[n % 297 : n % 297 + 3] if batch else records[n % 300]
                    answer = http.post("/v1/score", json=body)
                    results = answer.json() if answer.status_code == 200 else []
                    results = results if isinstance(results, list) else [results]
                    with lock:
                        answers.append((answer.status_code, answer.headers.get(HEADER), results))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 400}, statuses
    assert len({pid for _, pid, _ in answers}) == WORKERS, "not every worker answered"
    answered = [result["score_id"] for _, _, results in answers for result in results]
    assert len(answered) == len(set(answered))  # no id answered twice
    stored = _stored(url, environment)
    assert set(stored) == set(answered), "answered and stored score ids differ"
    assert set(stored.values()) == {1}, "a score id is stored more than once"

    # /metrics counts every worker's scores, whichever worker answers the scrape.
    for _ in range(WORKERS * 2):
        text = httpx.get(server.url + "/metrics", timeout=10).text
        assert _metric(text, "crispml_scores_stored_total") == len(answered)
        assert _metric(
            text, 'crispml_http_requests_total{method="POST",route="/v1/score",status="200"}'
        ) == len(answers)


def test_one_admin_reload_reaches_every_worker(workers, model_registry: Registry) -> None:
    server, _url, _environment = workers
    record = model_registry.records[0]["record"]

    def versions(count: int) -> list[tuple[str, str]]:
        seen = []
        for _ in range(count):  # a fresh connection each: any worker may take it
            answer = httpx.post(server.url + "/v1/score", json=record, timeout=30)
            assert answer.status_code == 200, answer.text
            seen.append((answer.headers[HEADER], answer.json()["model_version"]))
        return seen

    assert {version for _, version in versions(30)} == {"1"}
    model_registry.move_alias(ALIAS, 2)
    try:
        # Nobody polls the alias (interval 0): only the broadcast can move the workers
        # that did not receive this request.
        reloaded = httpx.post(
            server.url + "/v1/admin/reload",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["model"]["model_version"] == "2"
        on_two: set[str] = set()
        deadline = time.monotonic() + 20
        while len(on_two) < WORKERS and time.monotonic() < deadline:
            on_two |= {pid for pid, version in versions(6) if version == "2"}
        assert len(on_two) == WORKERS, f"workers on version 2 after 20 s: {on_two}"
        late = versions(30)
        assert {version for _, version in late} == {"2"}, late
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        # Three first loads and three swaps, summed over the workers.
        assert _metric(metrics, 'crispml_model_reloads_total{result="swapped"}') == 2 * WORKERS
    finally:
        model_registry.move_alias(ALIAS, 1)


def test_several_workers_refuse_a_sqlite_store(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", env="svcworkers", store_url=f"sqlite:///{tmp_path}/s.db")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CRISPML_", "MLFLOW_"))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--root",
            str(root),
            "--port",
            "1",
            "--workers",
            "2",
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "--workers 2 needs a PostgreSQL score store" in done.stderr
    assert "SQLite" in done.stderr and "CRISPML_STORE_URL" in done.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was created
