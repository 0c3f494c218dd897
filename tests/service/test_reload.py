"""Hot reload: the alias moves (promotion, then rollback) while clients keep scoring.

Each test moves its own alias of the shared registry (`reload`, `admin`), so that no
other server sees a version it did not expect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pipeline.store import ScoreStore

from .conftest import TOKEN, Registry, Server, make_repo, sample_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(model_registry: Registry, tmp_path_factory) -> Iterator[dict[str, tuple[Server, str]]]:
    made = {}
    for alias, interval in (("reload", "0.3"), ("admin", "0"), ("late", "0.3")):
        folder = tmp_path_factory.mktemp(alias)
        url = f"sqlite:///{folder / 'scores.db'}"
        root = make_repo(folder / "repo", env="svcreload", store_url=url, alias=alias)
        server = Server(
            root,
            model_registry,
            env_vars={
                "CRISPML_API_TOKEN": TOKEN,
                "CRISPML_SERVICE_RELOAD_INTERVAL": interval,
            },
        )
        made[alias] = (server, url)
    for server, _ in made.values():
        server.start()
    for alias, (server, _) in made.items():
        if alias != "late":  # nobody holds @late yet: that server starts unready
            server.wait_ready()
    yield made
    for server, _ in made.values():
        server.stop()


class Hammer:
    """Clients that score continuously and record every answer: (received, status,
    version, threshold, sent), times from time.monotonic()."""

    def __init__(self, server: Server, records: list[dict], clients: int = 4) -> None:
        self.server = server
        self.records = records
        self.answers: list[tuple[float, int, str | None, float | None, float]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            i = offset
            while not self._stop.is_set():
                record = self.records[i % len(self.records)]
                sent = time.monotonic()
                answer = client.post("/v1/score", json=record)
                body = answer.json() if answer.status_code == 200 else {}
                with self._lock:
                    self.answers.append(
                        (
                            time.monotonic(),
                            answer.status_code,
                            body.get("model_version"),
                            body.get("threshold"),
                            sent,
                        )
                    )
                i += 4

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for_version(self, version: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                recent = [a[2] for a in self.answers[-8:]]
            if recent and all(v == version for v in recent):
                return
            time.sleep(0.05)
        raise AssertionError(f"version {version} did not take over within {timeout} s")


def test_promotion_and_rollback_switch_versions_without_failing_requests(
    pair, model_registry: Registry
) -> None:
    server, url = pair["reload"]
    v1, v2 = model_registry.version(1), model_registry.version(2)
    with Hammer(server, sample_records(model_registry, 200)) as hammer:
        hammer.wait_for_version("1")
        promoted = time.monotonic()
        model_registry.move_alias("reload", 2)  # promotion
        hammer.wait_for_version("2")
        rolled_back = time.monotonic()
        model_registry.move_alias("reload", 1)  # rollback
        hammer.wait_for_version("1")
        time.sleep(0.2)
    answers = hammer.answers
    assert len(answers) > 50
    assert {a[1] for a in answers} == {200}, "a request failed during a swap"
    # Every answer is internally consistent: a version with its own threshold.
    thresholds = {"1": v1["threshold"], "2": v2["threshold"]}
    assert all(threshold == thresholds[version] for _, _, version, threshold, _ in answers)

    # No flapping back and forth: before the promotion only version 1 answers; once a
    # version-2 answer came back, every request sent after it (until the rollback) gets
    # version 2; once a version-1 answer came back after the rollback, every later
    # request gets version 1. (Arrival order alone cannot show this: a request in flight
    # during a swap took the old model and may come back after the first new answer.)
    def first_received(version: str, since: float) -> float:
        return min(r for r, _, v, _, sent in answers if v == version and sent >= since)

    new_from = first_received("2", promoted)
    old_from = first_received("1", rolled_back)
    for _, _, version, _, sent in answers:
        if sent < promoted:
            assert version == "1", sent
        elif new_from < sent < rolled_back:
            assert version == "2", sent
        elif sent > old_from:
            assert version == "1", sent
    ordered = [a[2] for a in answers]
    # What was answered is what was stored, version for version.
    store = ScoreStore(url)
    try:
        assert store.count_scores(model_version="2") == ordered.count("2")
        assert store.count_scores(model_version="1") == ordered.count("1")
        assert store.count_scores(model_version="2", run_id=v2["run_id"]) == ordered.count("2")
    finally:
        store.dispose()
    with httpx.Client(base_url=server.url) as client:
        metrics = client.get("/metrics").text
    assert 'crispml_model_reloads_total{result="swapped"} 3.0' in metrics


def test_admin_reload_switches_at_once(pair, model_registry: Registry) -> None:
    server, _ = pair["admin"]
    record = sample_records(model_registry, 1)[0]
    with server.client(TOKEN) as client:
        assert client.post("/v1/score", json=record).json()["model_version"] == "1"
        model_registry.move_alias("admin", 2)
        # No polling on this server: the alias moved, but version 1 still serves.
        assert client.post("/v1/score", json=record).json()["model_version"] == "1"
        answer = client.post("/v1/admin/reload")
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] is True
        assert answer.json()["previous_version"] == "1"
        assert answer.json()["model"]["model_version"] == "2"
        assert answer.json()["model"]["threshold"] == model_registry.version(2)["threshold"]
        assert client.post("/v1/score", json=record).json()["model_version"] == "2"
        assert client.get("/readyz").json()["model"]["model_version"] == "2"
        again = client.post("/v1/admin/reload").json()
        assert again["changed"] is False and again["model"]["model_version"] == "2"


def test_a_service_started_before_any_promotion_becomes_ready_when_the_alias_appears(
    pair, model_registry: Registry
) -> None:
    server, _ = pair["late"]
    record = sample_records(model_registry, 1)[0]
    with server.client() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # up (healthz), but not ready
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "holds alias @late" in ready.json()["reasons"][0]
        refused = client.post("/v1/score", json=record)
        assert refused.status_code == 503 and "no model is loaded" in refused.json()["detail"]
        model_registry.move_alias("late", 1)
        server.wait_ready(timeout=20)
        assert client.post("/v1/score", json=record).json()["model_version"] == "1"
