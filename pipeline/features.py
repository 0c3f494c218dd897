"""The feature transformation that travels inside the model.

It is a fitted scikit-learn transformer, so the REST service, batch scoring and the
report all compute exactly the features that training saw; there is no second
implementation to drift out of step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

SECONDS_PER_DAY = 86_400.0


class TransactionFeatures(TransformerMixin, BaseEstimator):
    """Raw model inputs -> numeric matrix: cyclic time of day, log amount, optional scaling."""

    def __init__(
        self,
        time_column: str = "Time",
        feature_columns: tuple[str, ...] = (),
        log_amount: str | None = "Amount",
        time_of_day: bool = True,
        scale: bool = True,
    ) -> None:
        self.time_column = time_column
        self.feature_columns = feature_columns
        self.log_amount = log_amount
        self.time_of_day = time_of_day
        self.scale = scale

    def _raw(self, X: pd.DataFrame) -> np.ndarray:
        columns = []
        for name in self.feature_columns:
            values = X[name].to_numpy(dtype="float64")
            if name == self.log_amount:
                values = np.log1p(np.clip(values, 0.0, None))
            columns.append(values)
        if self.time_of_day:
            angle = 2 * np.pi * (X[self.time_column].to_numpy(dtype="float64") % SECONDS_PER_DAY)
            angle /= SECONDS_PER_DAY
            columns.extend([np.sin(angle), np.cos(angle)])
        return np.column_stack(columns)

    def fit(self, X: pd.DataFrame, y: object = None) -> TransactionFeatures:
        raw = self._raw(X)
        self.mean_ = raw.mean(axis=0) if self.scale else np.zeros(raw.shape[1])
        std = raw.std(axis=0) if self.scale else np.ones(raw.shape[1])
        self.scale_ = np.where(std > 0, std, 1.0)
        self.n_features_in_ = len(self.input_columns)
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return (self._raw(X) - self.mean_) / self.scale_

    @property
    def input_columns(self) -> list[str]:
        return [self.time_column, *self.feature_columns]

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        names = [f"log_{n}" if n == self.log_amount else n for n in self.feature_columns]
        if self.time_of_day:
            names += ["time_of_day_sin", "time_of_day_cos"]
        return np.asarray(names, dtype=object)
