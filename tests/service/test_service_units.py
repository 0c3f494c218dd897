"""Fast checks of the service's small pure parts: configuration, model URIs, error pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.service.app import create_app
from pipeline.service.config import ServiceConfig
from pipeline.service.model import ServingModel, _threshold, parse_model_uri
from pipeline.service.scoring import _ScoreJob, predict_jobs
from pipeline.store import utcnow

from .conftest import make_repo


def test_config_reads_the_environment_and_names_bad_variables() -> None:
    config = ServiceConfig.from_env(
        {
            "CRISPML_SERVICE_MAX_BATCH": "7",
            "CRISPML_SERVICE_RELOAD_INTERVAL": "2.5",
            "CRISPML_API_TOKEN": "  secret-token  ",
            "CRISPML_SCORE_REQUIRES_TOKEN": "yes",
        }
    )
    assert (config.max_batch, config.reload_interval) == (7, 2.5)
    assert config.api_token == "secret-token" and config.score_requires_token
    assert "secret-token" not in repr(config)
    assert ServiceConfig.from_env({"CRISPML_API_TOKEN": ""}).api_token is None
    for variable, value in [
        ("CRISPML_SERVICE_MAX_BATCH", "0"),
        ("CRISPML_SERVICE_MAX_BATCH", "ten"),
        ("CRISPML_SCORE_REQUIRES_TOKEN", "maybe"),
    ]:
        with pytest.raises(ConfigError, match=variable):
            ServiceConfig.from_env({variable: value, "CRISPML_API_TOKEN": "t"})
    with pytest.raises(ConfigError, match="nobody could score"):
        ServiceConfig.from_env({"CRISPML_SCORE_REQUIRES_TOKEN": "1"})


def test_model_uris(tmp_path: Path) -> None:
    alias = parse_model_uri("models:/fraud@prod", tmp_path, "x")
    assert (alias.kind, alias.name, alias.alias, alias.movable) == ("alias", "fraud", "prod", True)
    pinned = parse_model_uri("models:/fraud/12", tmp_path, "x")
    assert (pinned.kind, pinned.version, pinned.movable) == ("version", "12", False)
    (tmp_path / "data" / "models" / "model").mkdir(parents=True)
    (tmp_path / "data" / "models" / "model" / "MLmodel").write_text("flavors: {}\n")
    local = parse_model_uri("data/models/model", tmp_path, "fraud")
    assert (local.kind, local.name, local.path) == (
        "path",
        "fraud",
        tmp_path / "data" / "models" / "model",
    )
    for bad in ("s3://bucket/model", "models:/fraud", "runs:/abc/model", "no/such/folder"):
        with pytest.raises(ConfigError, match="expected models:/<name>@<alias>"):
            parse_model_uri(bad, tmp_path, "fraud")


def test_threshold_must_be_a_probability() -> None:
    assert _threshold("0.25", "v") == 0.25
    for bad in (None, "abc", "1.5", "nan"):
        with pytest.raises(ConfigError, match="threshold"):
            _threshold(bad, "model m version 3")


class _Echo:
    """A stand-in model whose score is its first input, and which counts its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(frame))
        first = frame.iloc[:, 0].to_numpy(dtype=float)
        return np.column_stack([1 - first, first])


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(rows, dtype="float64"), columns=["a", "b"])


def _serving(version: str, model: _Echo) -> ServingModel:
    return ServingModel(
        model=model,
        name="m",
        version=version,
        run_id="r",
        threshold=0.5,
        git_commit="c",
        uri="u",
        loaded_at=utcnow(),
    )


def test_batched_prediction_keeps_each_request_with_its_own_model_and_order() -> None:
    old_model, new_model = _Echo(), _Echo()
    old, new = _serving("1", old_model), _serving("2", new_model)
    jobs = [
        _ScoreJob(old, [(0.1, 0), (0.2, 0)]),
        _ScoreJob(new, [(0.3, 0)]),
        _ScoreJob(old, [(0.4, 0)]),
    ]
    out = predict_jobs(jobs, _frame)
    assert [list(o) for o in out] == [[0.1, 0.2], [0.3], [0.4]]
    # One call per model version, not per request; a reload mid-batch mixes nothing.
    assert (old_model.calls, new_model.calls) == ([3], [1])


class _Picky(_Echo):
    """Breaks on any batch holding a row whose second value is negative."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if (frame["b"] < 0).any():
            raise ValueError("found unknown categories ['never-seen'] in column 1")
        return super().predict_proba(frame)


def test_a_row_the_model_cannot_score_fails_only_its_own_request() -> None:
    model = _Picky()
    serving = _serving("1", model)
    jobs = [
        _ScoreJob(serving, [(0.1, 0)]),
        _ScoreJob(serving, [(0.2, -1), (0.3, 0)]),
        _ScoreJob(serving, [(0.4, 0)]),
    ]
    out = predict_jobs(jobs, _frame)
    assert [list(o) for o in (out[0], out[2])] == [[0.1], [0.4]]
    assert isinstance(out[1], ValueError) and "unknown categories" in str(out[1])
    # The shared call failed, then each request was scored alone.
    assert model.calls == [1, 1]


def test_unexpected_errors_answer_500_without_a_trace(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", env="svcunit", store_url=f"sqlite:///{tmp_path}/s.db")
    app = create_app(load_settings(root), ServiceConfig(api_token="t"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 in a deep stack")

    # No lifespan (no `with`): nothing is loaded, only the error handling is exercised.
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/boom")
    assert answer.status_code == 500
    assert answer.json()["detail"].startswith("internal error (id ")
    assert "hunter2" not in answer.text and "Traceback" not in answer.text
