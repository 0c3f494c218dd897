"""Roles and tokens, token-only shared environments, the bounded report, random score ids,
and a start-up that a dead registry cannot delay.

Most tests run the app in process (FastAPI's TestClient) with a stand-in model, so they
need no registry; two start the real `crispml serve`, because what they check - the
exit code of a refused start, how soon the process listens - only exists there.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.service import state as state_module
from pipeline.service.app import create_app
from pipeline.service.config import ServiceConfig
from pipeline.service.contract import QualityReport
from pipeline.service.model import ModelRef, ServingModel
from pipeline.service.routers import audit as audit_router
from pipeline.store import utcnow

from .conftest import Registry, Server, free_port, make_repo

SCORE, READ, LABEL, ADMIN = "score-token-1", "read-token-22", "label-token-333", "admin-token-4444"
ROLE_TOKENS = (("score", SCORE), ("read", READ), ("label", LABEL))
WINDOW = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


class _Constant:
    """A stand-in model: every record scores 0.3."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return np.tile([0.7, 0.3], (len(frame), 1))


def _serving(version: str = "1") -> ServingModel:
    return ServingModel(
        model=_Constant(),
        name="fraud",
        version=version,
        run_id="r",
        threshold=0.5,
        git_commit="c",
        uri="test:constant",
        loaded_at=utcnow(),
    )


def _app(root: Path, config: ServiceConfig) -> FastAPI:
    """The app of `root` serving `_Constant` (store migrated, no registry touched)."""
    app = create_app(load_settings(root), config)
    state = app.state.service
    state.store.migrate()
    state.models.current = _serving()
    state.prepared = True  # the lifespan must not look for a registry
    return app


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("record")
    root = make_repo(folder / "repo", env="svcsec", store_url=f"sqlite:///{folder / 's.db'}")
    return dict(create_app(load_settings(root), ServiceConfig()).state.service.schema.example)


# ------------------------------------------------------------------ configuration


def test_role_tokens_are_read_from_the_environment() -> None:
    config = ServiceConfig.from_env(
        {
            "CRISPML_API_TOKENS": f" score:{SCORE},read:{READ}\nlabel:{LABEL} ",
            "CRISPML_API_TOKEN": "",
        }
    )
    assert config.roles_of(SCORE) == {"score"} and config.roles_of(READ) == {"read"}
    assert config.roles_of(LABEL) == {"label"} and config.roles_of("nope") == frozenset()
    assert not config.has_token_for("admin") and config.has_token_for("label")
    # CRISPML_API_TOKEN alone, as every existing deployment sets it: an admin token.
    legacy = ServiceConfig.from_env({"CRISPML_API_TOKEN": ADMIN})
    assert legacy.roles_of(ADMIN) == {"score", "read", "label", "admin"}
    assert all(legacy.has_token_for(role) for role in ("score", "read", "label", "admin"))
    assert SCORE not in repr(config) and ADMIN not in repr(legacy)
    for raw in (f"scorer:{SCORE}", SCORE, "read:", f"read:{READ},admin"):
        with pytest.raises(ConfigError, match="CRISPML_API_TOKENS: pair") as error:
            ServiceConfig.from_env({"CRISPML_API_TOKENS": raw})
        assert SCORE not in str(error.value) and READ not in str(error.value)
    # A score token alone is enough to let scoring require one.
    only_score = {"CRISPML_API_TOKENS": f"score:{SCORE}", "CRISPML_SCORE_REQUIRES_TOKEN": "1"}
    assert ServiceConfig.from_env(only_score).score_requires_token


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """All tokens are compared with hmac.compare_digest, also after a match."""
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    config = ServiceConfig(api_token=ADMIN, api_tokens=ROLE_TOKENS)
    assert config.roles_of(ADMIN) == {"score", "read", "label", "admin"}
    assert sorted(calls) == sorted(t.encode() for t in (ADMIN, SCORE, READ, LABEL))


# ------------------------------------------------------------------ roles


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """dev-like environment, a token per role and an admin token, scoring closed."""
    folder = tmp_path_factory.mktemp("roles")
    root = make_repo(folder / "repo", env="svcroles", store_url=f"sqlite:///{folder / 's.db'}")
    config = ServiceConfig(
        api_token=ADMIN, api_tokens=ROLE_TOKENS, score_requires_token=True, reload_interval=0
    )
    app = _app(root, config)

    async def no_registry() -> Any:  # admin reload without a registry: the current model
        from pipeline.service.model import Reload

        return Reload(False, "1", app.state.service.models.current), None

    app.state.service.refresh_models = no_registry
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_each_endpoint_needs_its_role_and_admin_has_all(roles: TestClient, record: dict) -> None:
    scored = roles.post("/v1/score", json=record, headers=_auth(SCORE))
    assert scored.status_code == 200, scored.text
    score_id = scored.json()["score_id"]
    label = {"labels": [{"score_id": score_id, "label": 1}]}
    calls = {
        "score": lambda h: roles.post("/v1/score", json=record, headers=h),
        "label": lambda h: roles.post("/v1/labels", json=label, headers=h),
        "admin": lambda h: roles.post("/v1/admin/reload", headers=h),
    }
    tokens = {"score": SCORE, "read": READ, "label": LABEL, "admin": ADMIN}
    for role, call in calls.items():
        for holder, token in tokens.items():
            expected = 200 if holder in (role, "admin") else 403
            answer = call(_auth(token))
            assert answer.status_code == expected, (role, holder, answer.text)
            if expected == 403:
                assert role in answer.json()["detail"]
        for token in (None, "wrong-token"):
            answer = call(_auth(token))
            assert answer.status_code == 401, (role, token, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
    # dev: reading stays open, as it was.
    assert roles.get(f"/v1/scores/{score_id}").status_code == 200
    schema = roles.get("/openapi.json").json()["paths"]
    assert "403" in schema["/v1/labels"]["post"]["responses"]
    assert "security" not in schema["/v1/scores/{score_id}"]["get"]


def test_api_score_ids_are_random_uuid4(roles: TestClient, record: dict) -> None:
    """Score ids must not be guessable: uuid4, also for the same record sent twice."""
    same = {**record, "transaction_id": "same-record"}
    ids = [
        roles.post("/v1/score", json=same, headers=_auth(SCORE)).json()["score_id"]
        for _ in range(3)
    ]
    assert len(set(ids)) == 3
    assert all(uuid.UUID(hex=score_id).version == 4 for score_id in ids)


# ------------------------------------------------------------------ qa and prod


@pytest.mark.parametrize("env", ["qa", "prod"])
def test_a_shared_environment_refuses_to_start_without_a_token_per_role(
    tmp_path: Path, env: str
) -> None:
    root = make_repo(tmp_path / "repo", env=env, store_url=f"sqlite:///{tmp_path / 's.db'}")
    settings = load_settings(root)
    with pytest.raises(ConfigError, match="CRISPML_API_TOKEN") as error:
        create_app(settings, ServiceConfig())
    assert "'score', 'read', 'label', 'admin'" in str(error.value)
    partial = ServiceConfig(api_tokens=ROLE_TOKENS)  # no admin token: reload is unguarded
    with pytest.raises(ConfigError, match=r"\['admin'\]"):
        create_app(settings, partial)
    create_app(settings, ServiceConfig(api_token=ADMIN))  # one admin token covers all


def test_in_a_shared_environment_every_endpoint_but_the_probes_needs_a_token(
    tmp_path: Path, record: dict
) -> None:
    root = make_repo(tmp_path / "repo", env="qa", store_url=f"sqlite:///{tmp_path / 's.db'}")
    # Scoring "open" by the dev switch's default: qa ignores it.
    config = ServiceConfig(api_token=ADMIN, api_tokens=ROLE_TOKENS, reload_interval=0)
    with TestClient(_app(root, config), raise_server_exceptions=False) as client:
        score_id = client.post("/v1/score", json=record, headers=_auth(SCORE)).json()["score_id"]
        closed = {
            "score": lambda h: client.post("/v1/score", json=record, headers=h),
            "read": lambda h: client.get(f"/v1/scores/{score_id}", headers=h),
            "report": lambda h: client.get("/v1/report", params=WINDOW, headers=h),
        }
        for name, call in closed.items():
            assert call({}).status_code == 401, name
        assert closed["read"](_auth(SCORE)).status_code == 403
        assert closed["read"](_auth(READ)).status_code == 200
        assert closed["report"](_auth(READ)).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        for page in ("/openapi.json", "/docs", "/redoc"):  # not served without a token
            assert client.get(page).status_code == 404, page


@pytest.mark.slow
def test_crispml_serve_in_prod_without_tokens_exits_naming_the_variable(
    tmp_path: Path, model_registry: Registry
) -> None:
    import os
    import subprocess
    import sys

    root = make_repo(tmp_path / "repo", env="prod", store_url=f"sqlite:///{tmp_path / 's.db'}")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CRISPML_", "MLFLOW_"))}
    environ["MLFLOW_TRACKING_URI"] = model_registry.tracking_uri
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", "--root", str(root), "--port", "1"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "CRISPML_API_TOKEN" in done.stderr and "CRISPML_API_TOKENS" in done.stderr


# ------------------------------------------------------------------ the report


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[TestClient]:
    root = make_repo(tmp_path / "repo", env="svcreport", store_url=f"sqlite:///{tmp_path / 's.db'}")
    config = ServiceConfig(api_token=ADMIN, report_max_rows=3, reload_interval=0)
    with TestClient(_app(root, config), raise_server_exceptions=False) as client:
        yield client


def test_the_report_needs_a_window(capped: TestClient) -> None:
    answer = capped.get("/v1/report")
    assert answer.status_code == 422, answer.text
    assert {(p["field"], p["rule"]) for p in answer.json()["detail"]} == {
        ("from", "missing"),
        ("to", "missing"),
    }
    only_from = capped.get("/v1/report", params={"from": WINDOW["from"]})
    assert only_from.status_code == 422
    assert [p["field"] for p in only_from.json()["detail"]] == ["to"]


def test_above_the_cap_the_report_samples_and_says_so(capped: TestClient, record: dict) -> None:
    def score(count: int) -> None:
        batch = [{**record, "transaction_id": f"cap-{uuid.uuid4().hex}"} for _ in range(count)]
        assert capped.post("/v1/score", json=batch).status_code == 200

    score(3)
    exact = capped.get("/v1/report", params=WINDOW).json()
    assert (exact["scores"], exact["sampled"], exact["sampled_scores"]) == (3, False, None)
    score(2)
    sampled = capped.get("/v1/report", params=WINDOW).json()
    assert (sampled["scores"], sampled["sampled"], sampled["sampled_scores"]) == (5, True, 3)
    assert "5 score rows" in sampled["sample_reason"] and "cap of 3" in sampled["sample_reason"]
    assert sampled["online"] == [] and sampled["shadow"] is None


def test_the_report_is_built_off_the_event_loop(
    capped: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def build(state: Any, start: Any, end: Any, output: str) -> QualityReport:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return QualityReport(environment="x", scored_from=start, scored_to=end, scores=0, rows=0)

    monkeypatch.setattr(audit_router, "build_report", build)
    assert capped.get("/v1/report", params=WINDOW).status_code == 200
    assert seen == [False]  # no event loop runs in the thread that read and computed


# ------------------------------------------------------------------ a registry that is down


class _FlakyLoader:
    """A registry that is down for the first `failures` calls, then holds version 1."""

    def __init__(self, failures: int) -> None:
        self.ref = ModelRef("alias", "models:/fraud@dev", "fraud", alias="dev")
        self.failures = failures
        self.calls = 0

    def resolve(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("registry down")
        return "1"

    def load(self, version: str) -> ServingModel:
        return _serving(version)


def test_the_first_model_loads_in_the_background_once_the_registry_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling off (interval 0) and a registry down at start: the service listens at
    once, unready, and becomes ready by itself when the registry answers."""
    monkeypatch.setattr(state_module, "FIRST_LOAD_RETRY", 0.05)
    root = make_repo(tmp_path / "repo", env="svcflaky", store_url=f"sqlite:///{tmp_path / 's.db'}")
    app = create_app(load_settings(root), ServiceConfig(reload_interval=0))
    state = app.state.service
    loader = _FlakyLoader(failures=3)
    state.models.loader = loader
    state.challenger = None
    state.prepare()  # migrates; must not ask the registry
    assert loader.calls == 0 and state.models.current is None
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
    assert loader.calls == 4 and state.models.current.version == "1"


@pytest.mark.slow
def test_a_dead_registry_never_delays_listening(tmp_path: Path) -> None:
    """MLflow's retries took 106 s per call against a closed port; the service must
    listen within seconds, unready, whatever the registry does."""
    root = make_repo(tmp_path / "repo", env="svcdead", store_url=f"sqlite:///{tmp_path / 's.db'}")
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    server = Server(root, None, env_vars={"MLFLOW_TRACKING_URI": dead})
    started = time.monotonic()
    server.start()
    try:
        deadline = started + 30
        while True:
            assert time.monotonic() < deadline, f"not listening within 30 s:\n{server.log()}"
            assert server.process is not None and server.process.poll() is None, server.log()
            try:
                health = httpx.get(server.url + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        listening = time.monotonic() - started
        ready = httpx.get(server.url + "/readyz", timeout=10)
    finally:
        server.stop()
    assert health.status_code == 200
    assert ready.status_code == 503 and "no model loaded" in ready.json()["reasons"][0]
    print(f"listening after {listening:.1f} s")
    assert listening < 30
