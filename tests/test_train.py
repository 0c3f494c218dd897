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
    assert "sin__Time" in names and "cos__Time" in names and "Amount" in names


def test_the_saved_input_example_is_no_training_row(settings, splits, tmp_path) -> None:
    """MLflow keeps the input example beside the model; in qa and prod rows are real."""
    from mlflow.models import Model

    from pipeline.train import save_model

    parts, plan = splits
    train = parts["train"]
    model = fit_model(train, plan, settings)
    save_model(model, train, settings, tmp_path / "model")
    saved = Model.load(str(tmp_path / "model")).load_input_example(str(tmp_path / "model"))
    inputs = settings.model_inputs
    assert list(saved.columns) == inputs and len(saved) == 5
    rows = set(train[inputs].itertuples(index=False, name=None))
    assert not any(tuple(row) in rows for row in saved.itertuples(index=False, name=None))
    # Each value was observed in its column (types and ranges are the real ones).
    for column in inputs:
        assert saved[column].isin(train[column]).all(), column
    assert model.predict_proba(saved).shape == (5, 2)
    assert not saved.equals(train[inputs].head(5).reset_index(drop=True))
