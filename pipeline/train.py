"""Train (CRISP-DM: modeling): algorithm and hyperparameters from params, fixed seeds.

The fitted features and the estimator are joined in one scikit-learn Pipeline and
saved as an MLflow model with its signature and an input example, so whoever loads
it (report, register, the REST service, `mlflow models serve`) needs nothing else to
compute a score: not even this package (`pipeline.saved_model`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipeline.config import Settings
from pipeline.features import FeaturePlan, build_features, native_categorical_mask


def make_estimator(algorithm: str, hyperparameters: dict[str, Any], seed: int) -> Any:
    """Build the estimator; every one gets the seed, so two runs give identical models."""
    if algorithm == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, **hyperparameters)
    if algorithm == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=seed, **hyperparameters)
    if algorithm == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=seed, **hyperparameters)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def fit_model(train: pd.DataFrame, plan: FeaturePlan, settings: Settings) -> Pipeline:
    """Fit the features, then the estimator on them, and return both as one Pipeline.

    The features are fitted first because gradient boosting must be told which of the
    transformed columns are categories before it is fitted.
    """
    algorithm = settings.train.algorithm
    X = train[plan.inputs]
    y = train[settings.contract.target].to_numpy()
    features = build_features(plan, algorithm).fit(X)
    hyperparameters = settings.train.hyperparameters
    if algorithm == "hist_gradient_boosting":
        mask = native_categorical_mask(features, plan)
        if mask is not None:
            hyperparameters.setdefault("categorical_features", mask)
    estimator = make_estimator(algorithm, hyperparameters, settings.train.seed)
    estimator.fit(features.transform(X), y)
    if hasattr(estimator, "n_jobs"):
        # Parallel prediction adds tree outputs in thread completion order, so the last
        # bits of a probability change run to run. One thread makes scores reproducible
        # (and a single-record request gains nothing from threads anyway).
        estimator.set_params(n_jobs=1)
    # Both steps are fitted; a Pipeline of fitted steps predicts without refitting.
    return Pipeline([("features", features), ("model", estimator)])


def predict_proba(model: Pipeline, frame: pd.DataFrame, inputs: list[str]) -> np.ndarray:
    """Probability of the positive class: the one number every consumer needs."""
    return model.predict_proba(frame[inputs])[:, 1]


def synthetic_example(frame: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """Rows that show the model's input types without being anybody's record.

    MLflow keeps the input example beside the model, readable by whoever can read the
    registry; in qa and prod the training rows are real customers' transactions. Row i
    takes, column by column, the value at the i-th of `rows` evenly spaced quantiles
    (10 % to 90 %, an observed value, so each column keeps its type and range), and a
    text or boolean column its most frequent value. No row is a record of the data
    unless its columns move in perfect lockstep, and no rare value is exposed.
    """
    levels = np.linspace(0.1, 0.9, rows)
    columns = {}
    for name in frame.columns:
        column = frame[name]
        present = column.dropna()
        if present.empty:
            values = [column.iloc[0] if len(column) else None] * rows
        elif pd.api.types.is_bool_dtype(column) or not (
            pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column)
        ):
            values = [present.mode().iloc[0]] * rows
        else:
            values = list(present.quantile(levels, interpolation="nearest"))
        columns[name] = pd.Series(values, dtype=column.dtype)
    return pd.DataFrame(columns)


def save_model(model: Pipeline, train: pd.DataFrame, settings: Settings, path) -> None:
    """Save as an MLflow model with signature and input example, atomically."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from pipeline.io import atomic_dir
    from pipeline.saved_model import save_options

    inputs = settings.model_inputs
    example = synthetic_example(train[inputs])
    # The pyfunc flavour answers predict_proba, so the output schema is its (n, 2) array.
    signature = infer_signature(example, model.predict_proba(example))
    with atomic_dir(path) as tmp:
        tmp.rmdir()  # MLflow insists on creating the folder itself.
        mlflow.sklearn.save_model(
            model,
            str(tmp),
            signature=signature,
            input_example=example,
            **save_options(model),
        )


def run(settings: Settings) -> dict:
    """Entry point: curated train split + fitted features -> data/models/model (MLflow format)."""
    import time

    from pipeline.io import read_json
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    train = pd.read_parquet(layout.curated / "train.parquet")
    plan = FeaturePlan.from_dict(read_json(layout.features))
    started = time.perf_counter()
    model = fit_model(train, plan, settings)
    fit_seconds = time.perf_counter() - started
    save_model(model, train, settings, layout.model)
    return {
        "algorithm": settings.train.algorithm,
        "rows": len(train),
        "fit_seconds": round(fit_seconds, 3),
    }
