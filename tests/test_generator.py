from __future__ import annotations

import pandas as pd

from pipeline.generator import frame_of, generate


def test_same_seed_same_data_other_seed_other_data(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 2000})
    first, second = generate(config, 12), generate(config, 12)
    pd.testing.assert_frame_equal(first, second)
    other = generate(config.model_copy(update={"seed": 1}), 12)
    assert not first["V1"].equals(other["V1"])


def test_shape_and_fraud_rate_follow_the_config(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 50_000, "fraud_rate": 0.002})
    data = generate(config, 12)
    assert len(data) == 50_000
    assert data["Class"].sum() == 100
    assert data["Time"].between(0, config.duration_seconds).all()
    assert data["transaction_id"].is_unique
    assert {f"V{i}" for i in range(1, 29)} <= set(data.columns)


def test_drift_shifts_the_chosen_columns_from_its_start_frame(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 40_000})
    data = generate(config, 12)
    frame = frame_of(data["Time"].to_numpy(), config.duration_seconds, 12)
    before, after = data[frame < config.drift.start_frame], data[frame >= config.drift.start_frame]
    drifted = config.drift.columns[0]
    assert after[drifted].mean() - before[drifted].mean() > 0.5
    assert abs(after["V20"].mean() - before["V20"].mean()) < 0.1
    assert after["Amount"].median() > before["Amount"].median() * 1.2


def test_no_drift_when_start_frame_is_unset(settings) -> None:
    config = settings.generator.model_copy(
        update={
            "rows": 40_000,
            "drift": settings.generator.drift.model_copy(update={"start_frame": None}),
        }
    )
    data = generate(config, 12)
    frame = frame_of(data["Time"].to_numpy(), config.duration_seconds, 12)
    assert abs(data[frame >= 10]["V1"].mean() - data[frame < 10]["V1"].mean()) < 0.1
