"""The features that travel inside the model: encoding, imputation and declared transforms.

Everything here is fitted as the first step of the model's scikit-learn Pipeline, so
the REST service, batch scoring and the report compute exactly what training saw;
there is no second implementation to drift out of step.

`FeaturePlan` is what curate decides from the contract and params (which column is a
number, a category, a log or a clock), written as JSON: no code crosses from one
stage to the next. `build_features` turns the plan into a transformer for the chosen
algorithm, because algorithms want categories differently: gradient boosting splits
on them natively, logistic regression needs one-hot columns, a random forest does
well with ordinal codes. A category never seen in training becomes NaN (trees) or
all-zero (one-hot), so scoring never fails on it.

Every part is a scikit-learn class or a numpy ufunc, never a class of ours: the saved
model then loads with scikit-learn and skops alone, without `crispml` and without
trusting whatever an artifact declares (see `pipeline.saved_model`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

SECONDS_PER_DAY = 86_400.0
# HistGradientBoosting takes at most 255 bins, one of them for missing values.
MAX_NATIVE_CATEGORIES = 254
# One-hot columns per categorical feature; rarer values share one "infrequent" column.
MAX_ONE_HOT = 50
# Algorithms whose scikit-learn estimator splits on NaN itself.
HANDLES_NAN = frozenset({"hist_gradient_boosting", "random_forest"})
# The category a gap becomes, seen in training like any other.
MISSING = "(missing)"


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


def _to_float() -> StandardScaler:
    """Numbers, booleans and nullable ints (Int64, with pd.NA) as one float64 matrix.

    A StandardScaler that neither centres nor scales is scikit-learn's own "validate as
    float, keep NaN" step: it is what lets the model hold no code of ours, so that it
    loads with nothing but scikit-learn and skops' default trusted types.
    """
    return StandardScaler(with_mean=False, with_std=False)


def _time_of_day(kind: str) -> Pipeline:
    """sin and cos of the time of day, so 23:59 and 00:01 are neighbours.

    Built from trusted parts only: the time becomes a number of seconds (a datetime
    reaches the model as datetime64[ns], which contract validation, the service and
    MLflow's schema enforcement all produce, so `np.float64` gives nanoseconds), the
    ColumnTransformer's weight turns it into an angle, and numpy's sin and cos do the
    rest. No modulo is needed: sin and cos are periodic. The two features are named
    `sin__<column>` and `cos__<column>`.
    """
    seconds_per_unit = 1e-9 if kind == "datetime" else 1.0
    to_number = FunctionTransformer(np.float64, feature_names_out="one-to-one")
    if kind != "datetime":
        to_number = _to_float()
    angle = ColumnTransformer(
        [("angle", FunctionTransformer(feature_names_out="one-to-one"), [0])],
        transformer_weights={"angle": 2 * np.pi * seconds_per_unit / SECONDS_PER_DAY},
        verbose_feature_names_out=False,
    )
    return make_pipeline(
        to_number,
        angle,
        FeatureUnion(
            [
                ("sin", FunctionTransformer(np.sin, feature_names_out="one-to-one")),
                ("cos", FunctionTransformer(np.cos, feature_names_out="one-to-one")),
            ]
        ),
    )


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
    steps: list[Any] = [_to_float()]
    if log:
        # The config admits `log` only where the contract says min >= 0, and validation
        # enforces the min, so log1p never sees a negative number.
        steps.append(FunctionTransformer(np.log1p, feature_names_out="one-to-one"))
    if algorithm not in HANDLES_NAN and set(columns) & set(plan.nullable):
        # Median imputation loses the fact that a value was missing; the indicator keeps it.
        steps.append(SimpleImputer(strategy="median", add_indicator=True))
    if plan.scale:
        steps.append(StandardScaler())
    return make_pipeline(*steps)


def _categorical_steps(algorithm: str) -> Pipeline:
    """Categories as the encoders want them, with one "(missing)" category for a gap.

    A gap arrives as NaN from parquet and as None from the service; the encoders would
    see two different categories, so both become "(missing)" first (NaN, then None:
    the None imputer refuses NaN in its input).
    """
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    gaps = [
        SimpleImputer(strategy="constant", fill_value=MISSING, keep_empty_features=True),
        SimpleImputer(
            missing_values=None,
            strategy="constant",
            fill_value=MISSING,
            keep_empty_features=True,
        ),
    ]
    if algorithm == "logistic_regression":
        return make_pipeline(
            *gaps,
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                max_categories=MAX_ONE_HOT,
                sparse_output=False,
            ),
        )
    return make_pipeline(
        *gaps,
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
            ("time_of_day", _time_of_day(plan.time_of_day_kind or "seconds"), [plan.time_of_day])
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
