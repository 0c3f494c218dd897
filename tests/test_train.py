"""Training: deterministic for every algorithm, and the model carries its own features."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.contract import validate
from pipeline.curate import curate
from pipeline.generator import generate
from pipeline.ingest import FRAME, assign_frames
from pipeline.train import fit_model, predict_proba


@pytest.fixture
def splits(settings):
    data = validate(
        generate(settings.generator.model_copy(update={"rows": 4000}), 12), settings.contract
    )
    data[FRAME] = assign_frames(data, "Time", settings.frames)
    return curate(data[data[FRAME] <= 6], settings)


@pytest.mark.parametrize(
    "algorithm", ["random_forest", "hist_gradient_boosting", "logistic_regression"]
)
def test_two_trainings_give_identical_predictions(settings, splits, algorithm) -> None:
    parts, plan = splits
    settings = settings.model_copy(
        update={"train": settings.train.model_copy(update={"algorithm": algorithm})}
    )
    predictions = []
    for _ in range(2):
        model = fit_model(parts["train"], plan, settings)
        predictions.append(predict_proba(model, parts["test"], settings.model_inputs))
    np.testing.assert_array_equal(predictions[0], predictions[1])
    assert predictions[0].min() >= 0 and predictions[0].max() <= 1


def test_the_model_carries_its_features(settings, splits) -> None:
    parts, plan = splits
    model = fit_model(parts["train"], plan, settings)
    raw = parts["test"][settings.model_inputs]
    # Raw contract columns in, probabilities out: no feature code outside the model.
    assert model.predict_proba(raw).shape == (len(raw), 2)
    names = list(model.named_steps["features"].get_feature_names_out())
    assert "Time_sin" in names and "Amount" in names
