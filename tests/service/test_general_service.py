"""The service end to end on a general contract, with a real scikit-learn model.

The contract (`general_case.py`) has no id column, a datetime time column that is a
model input, categories with and without `allowed`, a bool with Y/N tokens, nullable
features, a datetime with a strptime format, and a target whose classes are "bad" and
"good". The model is an MLflow model folder served by path (no registry needed); every
frame it is given in this process is checked against the service's dtype promise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipeline.config import load_settings
from pipeline.service.app import create_app
from pipeline.service.config import ServiceConfig
from pipeline.store import ScoreStore

from .conftest import TOKEN, Server
from .general_case import (
    MODEL_DIR,
    RECORD,
    THRESHOLD,
    build_model,
    frames_checked,
    make_general_repo,
    server_pythonpath,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model()


@pytest.fixture(scope="module")
def root(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_general_repo(tmp_path_factory.mktemp("general"), model, env="svcgeneral")


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    settings = load_settings(root)
    assert settings.model_inputs[0] == "applied_at"  # the time column feeds time_of_day
    app = create_app(settings, ServiceConfig(api_token=TOKEN, reload_interval=0), MODEL_DIR)
    with (
        frames_checked() as seen,
        TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        http.frames_seen = seen  # type: ignore[attr-defined]
        yield http


def _count(root: Path) -> int:
    store = ScoreStore(load_settings(root).store_url)
    try:
        return store.count_scores()
    finally:
        store.dispose()


def test_the_published_schema_is_the_general_contract(client: TestClient) -> None:
    record = client.get("/openapi.json").json()["components"]["schemas"]["Record"]
    properties = record["properties"]
    assert "record_id" not in properties and record["required"] == list(properties)
    assert properties["purpose"]["enum"] == ["car", "house", "education"]
    assert properties["employer"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert {"enum": ["Y", "N"]} in properties["homeowner"]["anyOf"]
    assert properties["applied_at"]["format"] == "date-time"


def test_a_record_without_an_id_gets_one_derived_from_its_content(client: TestClient) -> None:
    first = client.post("/v1/score", json=RECORD)
    assert first.status_code == 200, first.text
    again = client.post("/v1/score", json={**RECORD, "homeowner": True})  # same content
    other = client.post("/v1/score", json={**RECORD, "children": 3})
    results = [answer.json() for answer in (first, again, other)]
    ids = [r["record_id"] for r in results]
    assert ids[0].startswith("r-") and len(ids[0]) == 34
    assert ids[0] == ids[1] != ids[2]
    assert results[0]["score"] == results[1]["score"]
    assert results[0]["threshold"] == THRESHOLD
    stored = client.get(f"/v1/scores/{results[0]['score_id']}").json()
    assert stored["record_id"] == ids[0]


def test_identical_records_in_one_batch_get_distinct_ids(client: TestClient) -> None:
    single = client.post("/v1/score", json=RECORD).json()
    answer = client.post("/v1/score", json=[RECORD, RECORD, {**RECORD, "children": 3}, RECORD])
    assert answer.status_code == 200, answer.text
    ids = [r["record_id"] for r in answer.json()]
    assert len(set(ids)) == 4
    assert ids[0] == single["record_id"]  # the first occurrence is the record's own id
    assert len({r["score"] for r in answer.json()}) == 2


def test_tokens_nulls_and_an_unseen_category_reach_the_model_as_promised(
    client: TestClient,
) -> None:
    record = {
        **RECORD,
        "income": None,
        "employer": "never-seen-employer",
        "homeowner": "N",
        "has_phone": None,
        "opened": None,
        "applied_at": "2024-03-01T08:30:00Z",
    }
    answer = client.post("/v1/score", json=record)
    assert answer.status_code == 200, answer.text
    # The same record, framed by hand as the service documents it.
    expected = pd.DataFrame(
        {
            "applied_at": pd.Series([pd.Timestamp("2024-03-01 08:30")], dtype="datetime64[ns]"),
            "income": [np.nan],
            "children": [2.0],
            "purpose": pd.Series(["car"], dtype=object),
            "employer": pd.Series(["never-seen-employer"], dtype=object),
            "homeowner": [0.0],
            "has_phone": [np.nan],
            "opened": pd.Series([pd.NaT], dtype="datetime64[ns]"),
        }
    )
    served = client.app.state.service.models.current.model  # type: ignore[attr-defined]
    assert answer.json()["score"] == pytest.approx(served.predict_proba(expected)[0, 1], abs=1e-12)
    # The service's own frames went through the dtype check (not only the one above).
    assert len(client.frames_seen) >= 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"purpose": "boat"}, "purpose", "literal_error"),
        ({"purpose": None}, "purpose", "str_type"),
        ({"employer": 12}, "employer", "string_type"),
        ({"homeowner": "maybe"}, "homeowner", "bool_parsing"),
        ({"homeowner": None}, "homeowner", "bool_type"),
        ({"children": None}, "children", "int_type"),
        ({"applied_at": 1709280000}, "applied_at", "datetime_type"),
        ({"applied_at": "1 March 2024"}, "applied_at", "datetime_parsing"),
        ({"opened": "2019-01-15"}, "opened", "datetime_parsing"),
        ({"record_id": "mine"}, "record_id", "extra_forbidden"),
    ],
)
def test_bad_values_are_422_naming_the_field_and_store_nothing(
    client: TestClient, root: Path, change: dict, field: str, rule: str
) -> None:
    before = _count(root)
    answer = client.post("/v1/score", json=[RECORD, {**RECORD, **change}])
    assert answer.status_code == 422, answer.text
    problems = [(p["field"], p["rule"]) for p in answer.json()["detail"]]
    assert problems == [(f"[1].{field}", rule)]
    assert field in answer.json()["error"]
    assert _count(root) == before


def test_labels_are_the_targets_own_values(client: TestClient) -> None:
    first, second = client.post(
        "/v1/score", json=[{**RECORD, "children": 4}, {**RECORD, "children": 5}]
    ).json()
    answer = client.post(
        "/v1/labels",
        json={
            "labels": [
                {"score_id": first["score_id"], "label": "bad"},
                {"record_id": second["record_id"], "label": "good"},  # the derived id works too
            ]
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 2
    assert client.get(f"/v1/scores/{first['score_id']}").json()["label"] == 1
    assert client.get(f"/v1/scores/{second['score_id']}").json()["label"] == 0
    for label, rule in (("meh", "literal_error"), ("BAD", "literal_error"), (1, "str_type")):
        refused = client.post(
            "/v1/labels", json={"labels": [{"score_id": first["score_id"], "label": label}]}
        )
        assert refused.status_code == 422, refused.text
        problem = refused.json()["detail"][0]
        assert (problem["field"], problem["rule"], problem["value"]) == (
            "labels[0].label",
            rule,
            label,
        )
    assert client.get(f"/v1/scores/{first['score_id']}").json()["label"] == 1


def test_a_model_that_breaks_on_an_unseen_category_is_refused_before_serving(
    tmp_path: Path,
) -> None:
    root = make_general_repo(tmp_path, build_model(handle_unknown="error"), env="svcbreaks")
    app = create_app(load_settings(root), ServiceConfig(reload_interval=0), MODEL_DIR)
    with pytest.raises(ValueError, match=r"failed its warm-up prediction.*unseen category"):
        app.state.service.prepare()


def test_crispml_serve_scores_and_labels_the_general_contract(model: Any, tmp_path: Path) -> None:
    root = make_general_repo(tmp_path, model, env="svcgeneralserve")
    server = Server(
        root,
        None,
        model_uri=MODEL_DIR,
        env_vars={
            "CRISPML_API_TOKEN": TOKEN,
            "CRISPML_SERVICE_RELOAD_INTERVAL": "0",
            "PYTHONPATH": server_pythonpath(),
        },
    )
    try:
        server.start().wait_ready()
        with server.client(TOKEN) as http:
            scored = http.post("/v1/score", json=[RECORD, RECORD])
            assert scored.status_code == 200, scored.text
            first, second = scored.json()
            assert first["record_id"] != second["record_id"]
            labelled = http.post(
                "/v1/labels", json={"labels": [{"record_id": first["record_id"], "label": "bad"}]}
            )
            assert labelled.status_code == 200, labelled.text
            assert http.get(f"/v1/scores/{first['score_id']}").json()["label"] == 1
            assert http.get(f"/v1/scores/{second['score_id']}").json()["label"] is None
    finally:
        server.stop()
    assert "unexpected error" not in server.log(), server.log()
