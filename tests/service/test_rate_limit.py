"""CRISPML_RATE_LIMIT: requests per token (or per address where no token is needed), 429
with Retry-After above it, and never a limit on the probes or /metrics.

The app runs in process (FastAPI's TestClient) with a stand-in model and a SQLite store;
limits are per minute, so no test waits for a window to pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.errors import ConfigError
from pipeline.service.config import ServiceConfig
from pipeline.service.ratelimit import RateLimiter

from .conftest import app_serving_constant, make_repo

ENV = "svclimit"
SCORE_A, SCORE_B, READ, ADMIN = "score-a-token-1", "score-b-token-22", "read-token-3", "admin-tok-4"
ROLE_TOKENS = (("score", SCORE_A), ("score", SCORE_B), ("read", READ))


def _app(tmp_path: Path, **config: Any) -> FastAPI:
    """The app of a fresh repository serving a constant model (store migrated, no registry)."""
    url = f"sqlite:///{tmp_path / 'scores.db'}"
    root = make_repo(tmp_path / "repo", env=ENV, store_url=url)
    settings = {"api_token": ADMIN, "api_tokens": ROLE_TOKENS, "reload_interval": 0, **config}
    return app_serving_constant(root, ServiceConfig(**settings))


@pytest.fixture
def client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """`request.param`: the ServiceConfig fields of the app under test."""
    app = _app(tmp_path, **request.param)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _record(http: TestClient, record_id: str) -> dict[str, Any]:
    return {**http.app.state.service.schema.example, "transaction_id": record_id}  # type: ignore[attr-defined]


# ------------------------------------------------------------------ configuration


def test_the_limit_is_read_from_the_environment_and_off_by_default() -> None:
    assert ServiceConfig.from_env({}).rate_limit is None
    assert ServiceConfig.from_env({"CRISPML_RATE_LIMIT": " "}).rate_limit is None
    assert ServiceConfig.from_env({"CRISPML_RATE_LIMIT": " 100/minute "}).rate_limit == (
        "100/minute"
    )
    several = ServiceConfig.from_env({"CRISPML_RATE_LIMIT": "10/second;500/hour"})
    assert several.rate_limit == "10/second;500/hour"
    for bad in ("lots", "0/minute", "100/fortnight", "/minute"):
        with pytest.raises(ConfigError, match="CRISPML_RATE_LIMIT"):
            ServiceConfig.from_env({"CRISPML_RATE_LIMIT": bad})
    with pytest.raises(ConfigError, match="CRISPML_RATE_LIMIT"):
        ServiceConfig(rate_limit="100 a minute")


def test_a_token_is_known_by_a_name_that_reveals_nothing_of_it() -> None:
    shared = "shared-token-5"
    config = ServiceConfig(
        api_token=ADMIN, api_tokens=(*ROLE_TOKENS, ("read", shared), ("label", shared))
    )
    names = {token: config.identify(token)[0] for token in (ADMIN, SCORE_A, SCORE_B, shared)}
    assert len(set(names.values())) == 4, names  # one name per distinct token
    for token, name in names.items():
        assert name is not None and token not in name and name.startswith("token-")
    assert config.identify(shared) == (names[shared], frozenset({"read", "label"}))
    assert config.identify("nobody's token") == (None, frozenset())


def test_the_limiter_refuses_above_the_limit_and_says_how_long_to_wait() -> None:
    limiter = RateLimiter("2/minute;100/hour")
    assert [limiter.acquire("a"), limiter.acquire("a")] == [None, None]
    waits = [limiter.acquire("a") for _ in range(3)]
    assert all(isinstance(w, int) and 1 <= w <= 60 for w in waits), waits
    assert limiter.acquire("b") is None  # another key has its own count


# ------------------------------------------------------------------ the service


@pytest.mark.parametrize(
    "client", [{"rate_limit": "3/minute", "score_requires_token": True}], indirect=True
)
def test_a_token_above_its_limit_gets_429_and_another_token_does_not(client: TestClient) -> None:
    for n in range(3):
        scored = client.post("/v1/score", json=_record(client, f"a-{n}"), headers=_auth(SCORE_A))
        assert scored.status_code == 200, scored.text
    refused = client.post("/v1/score", json=_record(client, "a-3"), headers=_auth(SCORE_A))
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "CRISPML_RATE_LIMIT" in refused.json()["detail"]
    assert SCORE_A not in refused.text
    for n in range(3):  # the other score token still has its whole limit
        scored = client.post("/v1/score", json=_record(client, f"b-{n}"), headers=_auth(SCORE_B))
        assert scored.status_code == 200, scored.text
    # The refused request stored nothing: three answers per token.
    assert client.app.state.service.store.count_scores(environment=ENV) == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "client", [{"rate_limit": "3/minute", "score_requires_token": True}], indirect=True
)
def test_one_token_has_one_limit_across_its_endpoints(client: TestClient) -> None:
    """An admin token scoring and reading: its requests to both endpoints count together."""
    scored = client.post("/v1/score", json=_record(client, "adm-1"), headers=_auth(ADMIN))
    score_id = scored.json()["score_id"]
    assert client.get(f"/v1/scores/{score_id}", headers=_auth(ADMIN)).status_code == 200
    again = client.post("/v1/score", json=_record(client, "adm-2"), headers=_auth(ADMIN))
    assert again.status_code == 200, again.text
    assert client.get(f"/v1/scores/{score_id}", headers=_auth(ADMIN)).status_code == 429
    assert client.get(f"/v1/scores/{score_id}", headers=_auth(READ)).status_code == 200


@pytest.mark.parametrize("client", [{"rate_limit": "2/minute"}], indirect=True)
def test_probes_and_metrics_are_never_limited(client: TestClient) -> None:
    for _ in range(2):  # reads are open in dev: the client's address counts
        assert client.get("/v1/scores/unknown").status_code == 404
    assert client.get("/v1/scores/unknown").status_code == 429
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(5):
            answer = client.get(path, headers=_auth(SCORE_A))
            assert answer.status_code == 200, (path, answer.text)
    paths = client.get("/openapi.json").json()["paths"]
    assert "429" in paths["/v1/score"]["post"]["responses"]
    assert "429" in paths["/v1/admin/reload"]["post"]["responses"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "429" not in paths[path]["get"]["responses"], path


@pytest.mark.parametrize("client", [{"rate_limit": "2/minute"}], indirect=True)
def test_open_endpoints_count_per_address_and_a_valid_token_as_its_holder(
    client: TestClient,
) -> None:
    for n in range(2):
        assert client.post("/v1/score", json=_record(client, f"o-{n}")).status_code == 200
    refused = client.post("/v1/score", json=_record(client, "o-2"))
    assert refused.status_code == 429 and "this address" in refused.json()["detail"]
    # An unknown token is no way around the address's limit; a valid one counts as its own.
    unknown = client.post("/v1/score", json=_record(client, "o-3"), headers=_auth("guess"))
    assert unknown.status_code == 429
    held = client.post("/v1/score", json=_record(client, "o-4"), headers=_auth(READ))
    assert held.status_code == 200, held.text
    # Another address has its own count (no lifespan needed: a read uses no batcher).
    elsewhere = TestClient(client.app, raise_server_exceptions=False, client=("192.0.2.7", 1))
    assert elsewhere.get("/v1/scores/unknown").status_code == 404


@pytest.mark.parametrize("client", [{}], indirect=True)
def test_without_a_limit_nothing_is_ever_429(client: TestClient) -> None:
    for n in range(30):
        assert client.post("/v1/score", json=_record(client, f"n-{n}")).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert all("429" not in op["responses"] for ops in paths.values() for op in ops.values())
