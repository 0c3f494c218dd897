"""The features that travel inside the model: encoding, imputation and declared transforms.

Everything here is fitted as the first step of the model's scikit-learn Pipeline, so
the REST service, batch scoring and the report compute exactly what training saw;
there is no second implementation to drift out of step.

`FeaturePlan` is what curate decides from the contract and params (which column is a
number, a category, a log or a clock), written as JSON: no code crosses from one
stage to the next. `build_features` turns the plan into a transformer for the chosen
algorithm, because algorithms want categories differently: gradient boosting splits
on them natively, logistic regression needs one-hot columns, a random forest does
well with ordinal codes. A category never seen in training becomes "missing" (trees)
or all-zero (one-hot), so scoring never fails on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

SECONDS_PER_DAY = 86_400.0
# HistGradientBoosting takes at most 255 bins, one of them for missing values.
MAX_NATIVE_CATEGORIES = 254
# One-hot columns per categorical feature; rarer values share one "infrequent" column.
MAX_ONE_HOT = 50
# Algorithms whose scikit-learn estimator splits on NaN itself.
HANDLES_NAN = frozenset({"hist_gradient_boosting", "random_forest"})


@dataclass(frozen=True)
class FeaturePlan:
    """Which input is what. JSON in `data/models/features.json`, read by train."""

    inputs: list[str]
    numeric: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    nullable: list[str] = field(default_factory=list)
    time_of_day: str | None = None
    time_of_day_kind: str | None = None  # "datetime" or "seconds"
    scale: bool = True
    # What training saw, for the record: categories and their counts.
    categories_seen: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturePlan:
        return cls(**data)


class AsFloat(TransformerMixin, BaseEstimator):
    """Numbers, booleans (1/0) and nullable ints (Int64) as one float64 matrix, NaN for gaps."""

    def fit(self, X: Any, y: object = None) -> AsFloat:
        return self

    def transform(self, X: Any) -> np.ndarray:
        frame = pd.DataFrame(X)
        return (
            np.column_stack(
                [
                    pd.to_numeric(frame[c], errors="coerce").astype("float64").to_numpy()
                    for c in frame.columns
                ]
            )
            if len(frame.columns)
            else np.empty((len(frame), 0))
        )

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(input_features, dtype=object)


class AsCategory(TransformerMixin, BaseEstimator):
    """Categories as Python strings with NaN for a gap, the one form the encoders accept."""

    def fit(self, X: Any, y: object = None) -> AsCategory:
        return self

    def transform(self, X: Any) -> np.ndarray:
        frame = pd.DataFrame(X).astype(object)
        return (
            frame.where(frame.notna(), np.nan)
            .map(lambda v: v if isinstance(v, float) else str(v))
            .to_numpy(dtype=object)
        )

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(input_features, dtype=object)


class TimeOfDay(TransformerMixin, BaseEstimator):
    """sin and cos of the time of day, so 23:59 and 00:01 are neighbours.

    Reads a datetime column (or ISO-8601 text) or a number of seconds.
    """

    def __init__(self, kind: str = "seconds") -> None:
        self.kind = kind

    def fit(self, X: Any, y: object = None) -> TimeOfDay:
        return self

    def _seconds(self, column: pd.Series) -> np.ndarray:
        if self.kind == "datetime":
            stamps = pd.to_datetime(column, utc=True, format="ISO8601")
            return (stamps.dt.hour * 3600.0 + stamps.dt.minute * 60.0 + stamps.dt.second).to_numpy(
                dtype="float64", na_value=np.nan
            )
        return pd.to_numeric(column, errors="coerce").astype("float64").to_numpy() % SECONDS_PER_DAY

    def transform(self, X: Any) -> np.ndarray:
        frame = pd.DataFrame(X)
        angle = 2 * np.pi * self._seconds(frame.iloc[:, 0]) / SECONDS_PER_DAY
        return np.column_stack([np.sin(angle), np.cos(angle)])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        name = input_features[0] if input_features is not None else "time"
        return np.asarray([f"{name}_sin", f"{name}_cos"], dtype=object)


def _log1p(values: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(values, 0.0, None))


def plan_features(settings: Any, train: pd.DataFrame) -> FeaturePlan:
    """Decide each input's treatment from the contract and `curate.features`."""
    contract, options = settings.contract, settings.curate.features
    specs = contract.by_name
    time_of_day = options.time_of_day
    features = [c for c in settings.model_inputs if c != time_of_day or c in contract.features]
    categorical = [c for c in features if specs[c].dtype == "string"]
    log = [c for c in options.log if c in features]
    numeric = [
        c
        for c in features
        if c not in categorical and c not in log and specs[c].dtype != "datetime"
    ]
    seen = {
        c: {str(k): int(v) for k, v in train[c].value_counts(dropna=False).items()}
        for c in categorical
    }
    return FeaturePlan(
        inputs=list(settings.model_inputs),
        numeric=numeric,
        log=log,
        categorical=categorical,
        nullable=[c for c in settings.model_inputs if specs[c].nullable],
        time_of_day=time_of_day,
        time_of_day_kind=None
        if time_of_day is None
        else ("datetime" if specs[time_of_day].dtype == "datetime" else "seconds"),
        scale=options.scale,
        categories_seen=seen,
    )


def _numeric_steps(plan: FeaturePlan, algorithm: str, columns: list[str], log: bool) -> Pipeline:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    steps: list[Any] = [AsFloat()]
    if log:
        steps.append(FunctionTransformer(_log1p, feature_names_out="one-to-one"))
    if algorithm not in HANDLES_NAN and set(columns) & set(plan.nullable):
        # Median imputation loses the fact that a value was missing; the indicator keeps it.
        steps.append(SimpleImputer(strategy="median", add_indicator=True))
    if plan.scale:
        steps.append(StandardScaler())
    return make_pipeline(*steps)


def _categorical_steps(algorithm: str) -> Pipeline:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if algorithm == "logistic_regression":
        return make_pipeline(
            AsCategory(),
            SimpleImputer(strategy="constant", fill_value="(missing)"),
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                max_categories=MAX_ONE_HOT,
                sparse_output=False,
            ),
        )
    return make_pipeline(
        AsCategory(),
        OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=MAX_NATIVE_CATEGORIES,
        ),
    )


def build_features(plan: FeaturePlan, algorithm: str) -> ColumnTransformer:
    """The unfitted transformer for `algorithm`; categorical outputs come last."""
    parts: list[tuple[str, Any, list[str]]] = []
    if plan.time_of_day is not None:
        parts.append(
            ("time_of_day", TimeOfDay(plan.time_of_day_kind or "seconds"), [plan.time_of_day])
        )
    if plan.numeric:
        parts.append(
            ("numeric", _numeric_steps(plan, algorithm, plan.numeric, False), plan.numeric)
        )
    if plan.log:
        parts.append(("log", _numeric_steps(plan, algorithm, plan.log, True), plan.log))
    if plan.categorical:
        parts.append(("categorical", _categorical_steps(algorithm), plan.categorical))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def native_categorical_mask(features: ColumnTransformer, plan: FeaturePlan) -> list[bool] | None:
    """Which transformed columns gradient boosting should treat as categories (fitted input)."""
    if not plan.categorical:
        return None
    names = list(features.get_feature_names_out())
    return [i >= len(names) - len(plan.categorical) for i in range(len(names))]
