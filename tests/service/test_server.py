"""The service against a real uvicorn on loopback, started by the real `crispml serve`.

Three servers share one registry: `api` (token set, small limits), `open_api` (no
token configured) and `private` (scoring needs the token, ids are pseudonymised).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pipeline.store import ScoreStore

from .conftest import TOKEN, Registry, Server, make_repo, sample_records, start_servers

pytestmark = pytest.mark.slow

MAX_BATCH = 5
MAX_BODY = 16 * 1024
PSEUDO_KEY = "service-tests-pseudonymisation-key"


@dataclass
class Running:
    server: Server
    store_url: str

    def count(self) -> int:
        store = ScoreStore(self.store_url)
        try:
            return store.count_scores()
        finally:
            store.dispose()


@pytest.fixture(scope="module")
def servers(
    model_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Running]]:
    made: dict[str, Running] = {}
    specs = {
        "api": ({"CRISPML_API_TOKEN": TOKEN}, {}),
        "open_api": ({}, {}),
        "private": (
            {
                "CRISPML_API_TOKEN": TOKEN,
                "CRISPML_SCORE_REQUIRES_TOKEN": "true",
                "CRISPML_PSEUDONYMISATION_KEY": PSEUDO_KEY,
            },
            {"pseudonymise_ids": True, "key_env": "CRISPML_PSEUDONYMISATION_KEY"},
        ),
    }
    for name, (env_vars, privacy) in specs.items():
        folder = tmp_path_factory.mktemp(name)
        url = f"sqlite:///{folder / 'scores.db'}"
        root = make_repo(folder / "repo", env="svctest", store_url=url, privacy=privacy)
        limits = {
            "CRISPML_SERVICE_MAX_BATCH": str(MAX_BATCH),
            "CRISPML_SERVICE_MAX_BODY_BYTES": str(MAX_BODY),
            "CRISPML_SERVICE_RELOAD_INTERVAL": "0",
        }
        made[name] = Running(Server(root, model_registry, env_vars={**limits, **env_vars}), url)
    start_servers(*(r.server for r in made.values()))
    yield made
    for running in made.values():
        running.server.stop()


@pytest.fixture(scope="module")
def api(servers: dict[str, Running]) -> Running:
    return servers["api"]


# ------------------------------------------------------------------ scoring


def test_one_record_is_scored_stored_and_traceable(api: Running, model_registry: Registry) -> None:
    record = sample_records(model_registry, 1)[0]
    before = api.count()
    with api.server.client() as client:
        answer = client.post("/v1/score", json=record)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        stored = client.get(f"/v1/scores/{result['score_id']}").json()
    v1 = model_registry.version(1)
    assert result["record_id"] == record["transaction_id"]
    assert result["model_version"] == "1" and result["threshold"] == v1["threshold"]
    assert 0.0 <= result["score"] <= 1.0
    assert result["decision"] == int(result["score"] >= result["threshold"])
    assert api.count() == before + 1
    assert stored["score"] == pytest.approx(result["score"])
    assert stored["record_id"] == record["transaction_id"]
    assert (stored["run_id"], stored["git_commit"]) == (v1["run_id"], "commit-v1")
    assert (stored["environment"], stored["channel"], stored["frame"]) == ("svctest", "api", None)
    assert stored["model_name"] == model_registry.model_name
    assert datetime.fromisoformat(stored["scored_at"]).tzinfo is not None
    assert stored["label"] is None


def test_a_batch_gets_one_result_per_record_in_order(api: Running, model_registry) -> None:
    records = sample_records(model_registry, MAX_BATCH, start=10)
    before = api.count()
    with api.server.client() as client:
        answer = client.post("/v1/score", json=records)
        single = [client.post("/v1/score", json=r).json()["score"] for r in records]
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert [r["record_id"] for r in results] == [r["transaction_id"] for r in records]
    assert len({r["score_id"] for r in results}) == MAX_BATCH
    # Batched inference gives the same numbers as one record at a time.
    assert [r["score"] for r in results] == pytest.approx(single, abs=1e-12)
    assert api.count() == before + 2 * MAX_BATCH


def test_a_record_without_its_optional_id_gets_a_derived_one(api: Running, model_registry) -> None:
    """The fraud contract's transaction_id is `required: false`: it may be left out."""
    record = {
        k: v
        for k, v in sample_records(model_registry, 1, start=60)[0].items()
        if k != "transaction_id"
    }
    with api.server.client() as client:
        single = client.post("/v1/score", json=record)
        assert single.status_code == 200, single.text
        batch = client.post(
            "/v1/score",
            json=[
                record,
                {**record, "transaction_id": None},
                {**record, "transaction_id": "given"},
            ],
        )
        assert batch.status_code == 200, batch.text
    derived = single.json()["record_id"]
    assert derived.startswith("r-") and len(derived) == 34
    ids = [r["record_id"] for r in batch.json()]
    assert ids[0] == derived and ids[1] != derived and ids[1].startswith("r-")
    assert ids[2] == "given"


def test_unknown_score_is_404(api: Running) -> None:
    with api.server.client() as client:
        answer = client.get("/v1/scores/does-not-exist")
    assert answer.status_code == 404
    assert "does-not-exist" in answer.json()["detail"]


# ------------------------------------------------------------------ labels and report


def test_labels_by_score_id_and_record_id_are_idempotent(api: Running, model_registry) -> None:
    records = sample_records(model_registry, 2, start=20)
    with api.server.client(TOKEN) as client:
        first, second = client.post("/v1/score", json=records).json()
        body = {
            "labels": [
                {"score_id": first["score_id"], "label": 1},
                {"record_id": second["record_id"], "label": 0},
            ]
        }
        for _ in range(2):  # the same labels twice: same outcome
            answer = client.post("/v1/labels", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "stored": 2,
                "environment": "svctest",
                "by_score_id": 1,
                "by_record_id": 1,
            }
        assert client.get(f"/v1/scores/{first['score_id']}").json()["label"] == 1
        assert client.get(f"/v1/scores/{second['score_id']}").json()["label"] == 0
        # A correction overwrites; the newest word wins, also inside one request.
        fix = {
            "labels": [
                {"score_id": first["score_id"], "label": 1},
                {"record_id": first["record_id"], "label": 0},
            ]
        }
        assert client.post("/v1/labels", json=fix).json()["stored"] == 1
        assert client.get(f"/v1/scores/{first['score_id']}").json()["label"] == 0


def test_an_unknown_score_id_rejects_the_whole_labels_request(api: Running, model_registry) -> None:
    record = sample_records(model_registry, 1, start=30)[0]
    with api.server.client(TOKEN) as client:
        known = client.post("/v1/score", json=record).json()
        answer = client.post(
            "/v1/labels",
            json={
                "labels": [
                    {"score_id": known["score_id"], "label": 1},
                    {"score_id": "0" * 32, "label": 0},
                ]
            },
        )
        assert answer.status_code == 404
        problem = answer.json()["detail"][0]
        assert (problem["field"], problem["rule"], problem["value"]) == (
            "labels[1].score_id",
            "unknown_score_id",
            "0" * 32,
        )
        assert client.get(f"/v1/scores/{known['score_id']}").json()["label"] is None


def test_report_verifies_stored_scores_against_labels(api: Running, model_registry) -> None:
    items = model_registry.records[100:300]
    start = datetime.now(UTC)  # same clock as the server: it stamps after this
    with api.server.client(TOKEN) as client:
        results = []
        for chunk in range(0, len(items), MAX_BATCH):
            batch = [item["record"] for item in items[chunk : chunk + MAX_BATCH]]
            results += client.post("/v1/score", json=batch).json()
        end = datetime.now(UTC) + timedelta(milliseconds=1)
        labels = [
            {"score_id": r["score_id"], "label": item["label"]}
            for r, item in zip(results, items, strict=True)
        ]
        assert client.post("/v1/labels", json={"labels": labels}).status_code == 200
        window = {"from": start.isoformat(), "to": end.isoformat()}
        report = client.get("/v1/report", params=window)
        assert report.status_code == 200, report.text
        summary = report.json()
        assert summary["scores"] == summary["rows"] == len(items)
        assert summary["positives"] == sum(item["label"] for item in items) > 0
        assert summary["predicted_positives"] == sum(r["decision"] for r in results)
        assert 0.5 < summary["roc_auc"] <= 1.0 and summary["pr_auc"] is not None
        html = client.get("/v1/report", params={**window, "format": "html"})
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        assert "<html" in html.text.lower() and len(html.text) > 10_000
        past = {"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"}
        empty = client.get("/v1/report", params=past).json()
        assert (empty["scores"], empty["rows"]) == (0, 0) and empty["reason"]
        assert client.get("/v1/report", params={**past, "format": "html"}).status_code == 404
        backwards = client.get("/v1/report", params={"from": window["to"], "to": window["from"]})
        assert backwards.status_code == 422
        assert backwards.json()["detail"][0]["field"] == "to"
        # not read as 1970 (`from` is given: the window is required)
        unix_time = client.get("/v1/report", params={"from": window["from"], "to": "0.5"})
        assert unix_time.status_code == 422
        assert [(p["field"], p["rule"]) for p in unix_time.json()["detail"]] == [
            ("to", "iso_datetime")
        ]


# ------------------------------------------------------------------ auth


def test_write_endpoints_need_the_token(api: Running) -> None:
    body = {"labels": [{"record_id": "x", "label": 1}]}
    with api.server.client() as anonymous, api.server.client("wrong-token") as wrong:
        for client in (anonymous, wrong):
            for path, payload in (("/v1/labels", body), ("/v1/admin/reload", None)):
                answer = client.post(path, json=payload)
                assert answer.status_code == 401, (path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
    with api.server.client(TOKEN) as client:
        answer = client.post("/v1/admin/reload")
        assert answer.status_code == 200
        assert answer.json()["changed"] is False and answer.json()["model"]["model_version"] == "1"


def test_without_a_configured_token_write_endpoints_are_closed(servers, model_registry) -> None:
    running = servers["open_api"]
    with running.server.client(TOKEN) as client:
        for path in ("/v1/labels", "/v1/admin/reload"):
            answer = client.post(path, json={"labels": [{"record_id": "x", "label": 1}]})
            assert answer.status_code == 503
            assert "CRISPML_API_TOKEN" in answer.json()["detail"]
        record = sample_records(model_registry, 1)[0]
        assert client.post("/v1/score", json=record).status_code == 200


def test_scoring_can_require_the_token_and_ids_are_pseudonymised(servers, model_registry) -> None:
    running = servers["private"]
    record = sample_records(model_registry, 1, start=40)[0]
    with running.server.client() as anonymous:
        assert anonymous.post("/v1/score", json=record).status_code == 401
    with running.server.client(TOKEN) as client:
        answer = client.post("/v1/score", json=record)
        assert answer.status_code == 200
        result = answer.json()
        assert result["record_id"] == record["transaction_id"]  # the caller's id comes back
        stored = client.get(f"/v1/scores/{result['score_id']}").json()
        expected = hmac.new(
            PSEUDO_KEY.encode(), record["transaction_id"].encode(), hashlib.sha256
        ).hexdigest()[:32]
        assert stored["record_id"] == expected  # as `prepare` keys ids for batch scores
        # Ground truth sent with the clear id joins the pseudonymised score.
        labelled = client.post(
            "/v1/labels", json={"labels": [{"record_id": record["transaction_id"], "label": 1}]}
        )
        assert labelled.status_code == 200
        assert client.get(f"/v1/scores/{result['score_id']}").json()["label"] == 1


# ------------------------------------------------------------------ bad input


def _raw(client: httpx.Client, body: bytes, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/score", content=body, headers={"content-type": "application/json", **headers}
    )


def _record(model_registry: Registry, **changes) -> dict:
    return {**sample_records(model_registry, 1, start=50)[0], **changes}


BAD_INPUTS = {
    "missing field": (lambda r: {k: v for k, v in r.items() if k != "V3"}, "V3", "missing"),
    "wrong type": (lambda r: {**r, "V1": "1.5"}, "V1", "float_type"),
    "boolean for a number": (lambda r: {**r, "Amount": True}, "Amount", "float_type"),
    "above max": (lambda r: {**r, "V4": 250.5}, "V4", "less_than_equal"),
    "below min": (lambda r: {**r, "Amount": -1}, "Amount", "greater_than_equal"),
    "unknown field": (lambda r: {**r, "colour": "red"}, "colour", "extra_forbidden"),
    "id too long": (
        lambda r: {**r, "transaction_id": "x" * 129},
        "transaction_id",
        "string_too_long",
    ),
    "batch too large": (lambda r: [r] * (MAX_BATCH + 1), "body", "too_long"),
    "empty batch": (lambda r: [], "body", "too_short"),
    "bad record in a batch": (lambda r: [r, {**r, "V2": 500.0}], "[1].V2", "less_than_equal"),
    "not an object": (lambda r: "hello", "body", "model_attributes_type"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_422_naming_field_and_rule_and_stores_nothing(
    api: Running, model_registry: Registry, case: str
) -> None:
    change, field, rule = BAD_INPUTS[case]
    before = api.count()
    with api.server.client() as client:
        answer = client.post("/v1/score", json=change(_record(model_registry)))
    assert answer.status_code == 422, answer.text
    problems = answer.json()["detail"]
    assert (field, rule) in [(p["field"], p["rule"]) for p in problems], problems
    assert field in answer.json()["error"]
    assert api.count() == before


NON_FINITE = {
    "NaN": (b"NaN", "NaN"),
    "Infinity": (b"Infinity", "Infinity"),
    "-Infinity": (b"-Infinity", "-Infinity"),
    "overflowing number": (b"1e999", "Infinity"),
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_nan_and_infinity_literals_are_rejected(api: Running, model_registry, case: str) -> None:
    literal, shown = NON_FINITE[case]
    text = json.dumps(_record(model_registry, V5=123456.0)).encode()
    body = text.replace(b"123456.0", literal)
    assert literal in body
    before = api.count()
    with api.server.client() as client:
        answer = _raw(client, body)
    assert answer.status_code == 422, answer.text

    def forbid(constant: str) -> None:
        raise AssertionError(f"the error response itself is not strict JSON: {constant}")

    problems = json.loads(answer.text, parse_constant=forbid)["detail"]
    assert [(p["field"], p["rule"], p["value"]) for p in problems] == [
        ("V5", "finite_number", shown)
    ]
    assert api.count() == before


def test_malformed_json_is_422(api: Running) -> None:
    before = api.count()
    with api.server.client() as client:
        answer = _raw(client, b'{"transaction_id": "a", "V1": ')
    assert answer.status_code == 422
    problem = answer.json()["detail"][0]
    assert (problem["field"], problem["rule"]) == ("body", "json_invalid")
    assert "character" in problem["msg"]
    assert api.count() == before


def test_body_above_the_limit_is_413_declared_or_streamed(api: Running) -> None:
    big = b'{"transaction_id": "' + b"x" * (MAX_BODY + 10) + b'"}'
    before = api.count()
    with api.server.client() as client:
        declared = _raw(client, big)
        streamed = client.post(
            "/v1/score",
            content=iter([big[:1000], big[1000:]]),
            headers={"content-type": "application/json"},
        )
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert str(MAX_BODY) in answer.json()["detail"]
    assert api.count() == before


def test_a_failed_commit_is_503_and_never_200(servers, model_registry) -> None:
    """Break the store under a running server: scoring must answer 503, not a score."""
    running = servers["open_api"]
    path = running.store_url.removeprefix("sqlite:///")
    with running.server.client() as client:
        assert client.post("/v1/score", json=_record(model_registry)).status_code == 200
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE scores RENAME TO scores_away")
        try:
            answer = client.post("/v1/score", json=_record(model_registry))
            assert answer.status_code == 503, answer.text
            assert "no score is answered" in answer.json()["detail"]
            assert "Traceback" not in answer.text
        finally:
            with sqlite3.connect(path) as db:
                db.execute("ALTER TABLE scores_away RENAME TO scores")
        assert client.post("/v1/score", json=_record(model_registry)).status_code == 200


# ------------------------------------------------------------------ operations


def test_health_readiness_docs_and_metrics(api: Running, model_registry) -> None:
    with api.server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model"]["model_version"] == "1"
        client.post("/v1/score", json=sample_records(model_registry, 1)[0])
        schema = client.get("/openapi.json").json()
        record = schema["components"]["schemas"]["Record"]
        assert record["properties"]["V14"]["minimum"] == -250
        assert record["additionalProperties"] is False
        assert "Swagger" in client.get("/docs").text
        metrics = client.get("/metrics").text
    assert 'crispml_http_requests_total{method="POST",route="/v1/score",status="200"}' in metrics
    assert 'crispml_http_request_duration_seconds_bucket{le="0.05",method="POST"' in metrics
    assert 'crispml_score_bucket{le="0.5",model_version="1"}' in metrics
    assert 'model_version="1"' in next(
        line for line in metrics.splitlines() if line.startswith("crispml_model_info")
    )
    assert "crispml_store_commit_rows_bucket" in metrics


# ------------------------------------------------------------------ a local model folder


def test_a_local_model_folder_serves_with_the_reported_threshold(model_registry, tmp_path) -> None:
    """`--model-uri data/models/model`: what `crispml train` leaves, before any registration."""
    import shutil

    source = next(model_registry.folder.glob("mlartifacts/**/artifacts/MLmodel")).parent
    url = f"sqlite:///{tmp_path / 'scores.db'}"
    root = make_repo(tmp_path / "repo", env="svclocal", store_url=url)
    shutil.copytree(source, root / "data" / "models" / "model")
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_text(json.dumps({"threshold": 0.42}))
    server = Server(
        root,
        model_registry,
        model_uri="data/models/model",
        env_vars={"CRISPML_SERVICE_RELOAD_INTERVAL": "1"},
    )
    try:
        server.start().wait_ready()
        with server.client() as client:
            result = client.post("/v1/score", json=sample_records(model_registry, 1)[0]).json()
            stored = client.get(f"/v1/scores/{result['score_id']}").json()
    finally:
        server.stop()
    assert result["threshold"] == 0.42
    assert result["model_version"].startswith("local-")
    meta = (source / "MLmodel").read_text()
    assert f"run_id: {stored['run_id']}" in meta


# ------------------------------------------------------------------ start-up failures


def _serve(root: Path, registry: Registry, *args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CRISPML_", "MLFLOW_"))}
    environ.update({"MLFLOW_TRACKING_URI": registry.tracking_uri, **env})
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", "--root", str(root), "--port", "1", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_up_refuses_a_configuration_that_cannot_work(tmp_path, model_registry) -> None:
    root = make_repo(tmp_path / "repo", env="svctest", store_url=f"sqlite:///{tmp_path}/s.db")
    locked_out = _serve(root, model_registry, CRISPML_SCORE_REQUIRES_TOKEN="1")
    assert locked_out.returncode == 3
    assert "CRISPML_API_TOKEN is not set" in locked_out.stderr
    bad_uri = _serve(root, model_registry, "--model-uri", "s3://bucket/model")
    assert bad_uri.returncode == 3
    assert "models:/<name>@<alias>" in bad_uri.stderr
    bad_number = _serve(root, model_registry, CRISPML_SERVICE_MAX_BATCH="many")
    assert bad_number.returncode == 3 and "CRISPML_SERVICE_MAX_BATCH" in bad_number.stderr
    # A pod without its environment label must not fall back to params.yaml's `env`.
    no_env = _serve(root, model_registry, CRISPML_ENV="")
    assert no_env.returncode == 3 and "CRISPML_ENV is set but empty" in no_env.stderr
    unknown_env = _serve(root, model_registry, CRISPML_ENV="nowhere")
    assert unknown_env.returncode == 3 and "'nowhere'" in unknown_env.stderr
