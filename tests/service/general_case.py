"""A general contract (no id, a datetime time column, categories, tokens, nulls, a word
target) and a small scikit-learn model for it, for the service's end-to-end tests.

The model is built here rather than by `pipeline.train`, so these tests pin what the
service promises the model - the frame's dtypes - whatever the training code does.
`frames_checked` refuses any frame that breaks that promise: numbers and booleans
float64, categories Python str (or None) in object columns, datetimes naive
datetime64[ns]. Categories go through `OneHotEncoder(handle_unknown="ignore")`, so a
category nobody trained on is scored, not a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TARGET: dict[str, Any] = {
    "name": "risk",
    "role": "target",
    "dtype": "string",
    "allowed": ["bad", "good"],
    "positive": "bad",
}
FEATURES: list[dict[str, Any]] = [
    {"name": "applied_at", "role": "time", "dtype": "datetime"},
    {"name": "income", "role": "feature", "dtype": "float", "min": 0, "nullable": True},
    {"name": "children", "role": "feature", "dtype": "int", "min": 0, "max": 20},
    {
        "name": "purpose",
        "role": "feature",
        "dtype": "string",
        "allowed": ["car", "house", "education"],
    },
    {"name": "employer", "role": "feature", "dtype": "string", "nullable": True},
    {
        "name": "homeowner",
        "role": "feature",
        "dtype": "bool",
        "true_values": ["Y"],
        "false_values": ["N"],
    },
    {"name": "has_phone", "role": "feature", "dtype": "bool", "nullable": True},
    {
        "name": "opened",
        "role": "feature",
        "dtype": "datetime",
        "format": "%d/%m/%Y",
        "nullable": True,
    },
]
# What Settings.model_inputs gives with curate.features.time_of_day: applied_at.
INPUTS = [
    "applied_at",
    "income",
    "children",
    "purpose",
    "employer",
    "homeowner",
    "has_phone",
    "opened",
]
NUMBERS = ["income", "children", "homeowner", "has_phone"]
CATEGORIES = ["purpose", "employer"]
DATETIMES = ["applied_at", "opened"]
RECORD: dict[str, Any] = {
    "applied_at": "2024-03-01T10:30:00+02:00",
    "income": 1200.5,
    "children": 2,
    "purpose": "car",
    "employer": "acme",
    "homeowner": "Y",
    "has_phone": True,
    "opened": "15/01/2019",
}
# params.yaml keys that replace the fraud ones in a test repository.
PARAMS: dict[str, Any] = {
    "contract": {"columns": [*FEATURES, TARGET]},
    "curate": {"features": {"log": [], "time_of_day": "applied_at", "scale": True}},
    "report": {"slices": []},
}
PRIVACY: dict[str, Any] = {"generalise": {}}
MODEL_DIR = "data/models/model"
THRESHOLD = 0.4


def check_frame(X: pd.DataFrame) -> None:
    """The frame the service promises a model, or TypeError saying what differs."""
    if list(X.columns) != INPUTS:
        raise TypeError(f"columns {list(X.columns)} are not {INPUTS}")
    for name in NUMBERS:
        if X[name].dtype != np.float64:
            raise TypeError(f"{name}: {X[name].dtype} is not float64")
    for name in CATEGORIES:
        if X[name].dtype != object or not all(v is None or type(v) is str for v in X[name]):
            raise TypeError(f"{name}: {X[name].dtype} is not an object column of str/None")
    for name in DATETIMES:
        if str(X[name].dtype) != "datetime64[ns]":
            raise TypeError(f"{name}: {X[name].dtype} is not datetime64[ns]")


@contextmanager
def frames_checked() -> Iterator[list[pd.DataFrame]]:
    """Every frame of the general contract a Pipeline scores in this process is checked.

    The saved model may hold scikit-learn parts only (`pipeline.saved_model`), so the
    guard that used to be its first step is a spy around `Pipeline.predict_proba`
    instead; the frames it saw are yielded, so a test can tell it ran.
    """
    from sklearn.pipeline import Pipeline

    seen: list[pd.DataFrame] = []
    original = Pipeline.predict_proba

    def guarded(self: Any, X: Any, **params: Any) -> Any:
        if isinstance(X, pd.DataFrame) and set(X.columns) == set(INPUTS):
            check_frame(X)
            seen.append(X)
        return original(self, X, **params)

    Pipeline.predict_proba = guarded  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Pipeline.predict_proba = original  # type: ignore[method-assign]


def training_frame(rows: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Inputs framed exactly as the service frames them, and y = 1 for "bad"."""
    rng = np.random.default_rng(seed)
    income = rng.gamma(2.0, 800.0, rows)
    income[rng.random(rows) < 0.1] = np.nan
    children = rng.integers(0, 5, rows).astype("float64")
    purpose = rng.choice(["car", "house", "education"], rows)
    employer = rng.choice(np.array(["acme", "globex", "initech", None], dtype=object), rows)
    homeowner = (rng.random(rows) < 0.5).astype("float64")
    has_phone = (rng.random(rows) < 0.7).astype("float64")
    has_phone[rng.random(rows) < 0.1] = np.nan
    applied = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        rng.integers(0, 86_400 * 90, rows), unit="s"
    )
    opened = pd.Series(
        pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 3000, rows), unit="D"),
        dtype="datetime64[ns]",
    )
    opened[rng.random(rows) < 0.1] = pd.NaT
    frame = pd.DataFrame(
        {
            "applied_at": pd.Series(applied, dtype="datetime64[ns]"),
            "income": income,
            "children": children,
            "purpose": pd.Series([str(v) for v in purpose], dtype=object),
            "employer": pd.Series(list(employer), dtype=object),
            "homeowner": homeowner,
            "has_phone": has_phone,
            "opened": opened,
        }
    )
    logit = (
        -1.0
        + 0.8 * (purpose == "education")
        - 0.0004 * np.nan_to_num(income, nan=1600)
        + 0.5 * children
        - 0.7 * homeowner
    )
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, y


def build_model(handle_unknown: str = "ignore") -> Any:
    """Scikit-learn parts only (the loader refuses anything else); `opened` is validated
    by the service but not read by the model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from pipeline.features import _time_of_day

    columns = ColumnTransformer(
        [
            ("categories", OneHotEncoder(handle_unknown=handle_unknown), CATEGORIES),
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), NUMBERS),
            # The clock of the application time, as `pipeline.features` builds it.
            ("applied_at", _time_of_day("datetime"), ["applied_at"]),
        ]
    )
    model = Pipeline(
        [
            ("columns", columns),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    )
    frame, y = training_frame()
    return model.fit(frame, y)


def save_model(model: Any, path: Path) -> None:
    """An MLflow model folder, as `crispml train` leaves data/models/model."""
    import mlflow.sklearn

    from pipeline.saved_model import save_options

    mlflow.sklearn.save_model(model, str(path), **save_options(model))


def make_general_repo(folder: Path, model: Any, env: str) -> Path:
    """A repository with the general contract, `model` in data/models/model and its
    threshold in reports/metrics.json (serve it with model URI `MODEL_DIR`)."""
    from .conftest import make_repo

    root = make_repo(
        folder / "repo",
        env=env,
        store_url=f"sqlite:///{folder / 'scores.db'}",
        params=PARAMS,
        privacy=PRIVACY,
    )
    save_model(model, root / MODEL_DIR)
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_text(json.dumps({"threshold": THRESHOLD}))
    return root


def server_pythonpath() -> str:
    """PYTHONPATH for a `crispml serve` subprocess started from the tests."""
    from .conftest import MAIN_ROOT

    paths = [str(MAIN_ROOT), str(MAIN_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in paths if p)
