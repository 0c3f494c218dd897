from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.contract import validate
from pipeline.generator import frame_of, generate

V_COLUMNS = [f"V{i}" for i in range(1, 29)]


def _frames(data: pd.DataFrame, config) -> np.ndarray:
    return frame_of(data["Time"].to_numpy(), config.duration_seconds, 12)


def test_same_seed_same_bytes_other_seed_other_data(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 2000})
    first, second = generate(config, 12), generate(config, 12)
    pd.testing.assert_frame_equal(first, second)
    assert first.to_csv(index=False).encode() == second.to_csv(index=False).encode()
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
    assert {"card_number", "customer_age", "postcode"} <= set(data.columns)


@pytest.mark.parametrize("extreme", [False, True], ids=["default", "extreme-drift"])
def test_values_stay_inside_the_contract(settings, extreme: bool) -> None:
    config = settings.generator.model_copy(update={"rows": 30_000})
    if extreme:
        # Shifts and scales far beyond any sensible drift are clipped, not passed on.
        drift = config.drift.model_copy(
            update={"start_frame": 2, "feature_shift": 300.0, "amount_scale": 50.0}
        )
        config = config.model_copy(update={"drift": drift})
    data = generate(config, 12)
    for spec in settings.contract.specs:
        if spec.name not in data.columns:
            continue
        column = data[spec.name]
        if spec.min is not None or spec.max is not None:
            assert np.isfinite(column).all(), spec.name
        if spec.min is not None:
            assert column.min() >= spec.min, spec.name
        if spec.max is not None:
            assert column.max() <= spec.max, spec.name
    validate(data, settings.contract)  # the project's own check agrees


def test_components_have_heavier_tails_than_a_normal(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 30_000})
    data = generate(config, 12)
    legit = data[data["Class"] == 0]
    kurtosis = legit[V_COLUMNS].kurt()  # excess kurtosis: 0 for a normal
    assert (kurtosis > 0.0).sum() >= 24, kurtosis.round(2).to_dict()
    assert kurtosis.median() > 1.0
    # The components the real data has kurtosis in the hundreds for.
    assert (kurtosis[["V5", "V7", "V8", "V20", "V21", "V23", "V27", "V28"]] > 10.0).all()
    # Far tails: a normal puts 0.1 % beyond 3.1 sd; heavy tails put more there.
    z = (legit[V_COLUMNS] - legit[V_COLUMNS].median()) / legit[V_COLUMNS].std()
    assert (z.abs() > 3.1).to_numpy().mean() > 0.003
    # Variances fall from V1 to V28, as in a PCA.
    std = legit[V_COLUMNS].std()
    assert std["V1"] > std["V10"] > std["V28"]


def test_amounts_are_mostly_small_with_a_long_tail(settings) -> None:
    config = settings.generator.model_copy(
        update={
            "rows": 50_000,
            "drift": settings.generator.drift.model_copy(update={"start_frame": None}),
        }
    )
    amount = generate(config, 12)["Amount"]
    assert 15.0 <= amount.median() <= 30.0
    assert 60.0 <= amount.mean() <= 120.0
    assert amount.mean() > 2.5 * amount.median()  # skewed: mean far above the median
    assert 0.002 <= (amount == 0).mean() <= 0.015  # exactly-zero amounts exist
    assert (amount == 1.0).mean() > 0.02  # the most common amount, as in the real data
    assert (amount < 10).mean() > 0.25
    assert amount.quantile(0.99) > 500.0
    assert amount.max() <= 25_691.16
    assert (amount.round(2) == amount).all()


def test_time_follows_a_day_and_night_rhythm(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 30_000})
    data = generate(config, 12)
    assert data["Time"].is_monotonic_increasing
    assert (data["Time"] == data["Time"].round()).all()
    hour = (data["Time"] % 86_400) // 3_600
    night, day = (hour.between(1, 5)).mean() / 5, (hour.between(10, 20)).mean() / 11
    assert day > 3 * night
    counts = np.bincount(_frames(data, config), minlength=13)[1:]
    assert counts[[0, 1, 6, 7]].max() < counts[[2, 3, 4, 5, 8, 9, 10, 11]].min()


def test_fraud_sits_apart_on_a_few_components(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 30_000, "fraud_rate": 0.02})
    data = generate(config, 12)
    frame = _frames(data, config)
    early = data[frame < config.drift.start_frame]
    fraud, legit = early[early["Class"] == 1], early[early["Class"] == 0]
    gap = (fraud[V_COLUMNS].median() - legit[V_COLUMNS].median()) / legit[V_COLUMNS].std()
    assert gap["V14"] < -1.0 and gap["V4"] > 1.0
    assert gap[["V13", "V15", "V22", "V24"]].abs().max() < 0.3


def test_drift_shifts_the_chosen_columns_from_its_start_frame(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 40_000})
    data = generate(config, 12)
    frame = _frames(data, config)
    before, after = data[frame < config.drift.start_frame], data[frame >= config.drift.start_frame]
    drifted = config.drift.columns[0]
    shift = after[drifted].median() - before[drifted].median()
    assert shift > 0.5 * config.drift.feature_shift * before[drifted].std()
    assert abs(after["V20"].median() - before["V20"].median()) < 0.05
    assert after["Amount"].median() > before["Amount"].median() * 1.2


def test_drift_changes_nothing_before_its_start_frame(settings) -> None:
    config = settings.generator.model_copy(update={"rows": 20_000})
    calm = config.model_copy(
        update={"drift": config.drift.model_copy(update={"start_frame": None})}
    )
    drifting, steady = generate(config, 12), generate(calm, 12)
    frame = _frames(drifting, config)
    early = frame < config.drift.start_frame
    pd.testing.assert_frame_equal(drifting[early], steady[early])
    late = ~early
    for name in config.drift.columns:
        assert (drifting.loc[late, name] > steady.loc[late, name]).mean() > 0.95, name
    untouched = [c for c in V_COLUMNS if c not in config.drift.columns]
    legit_late = late & (drifting["Class"] == 0).to_numpy()
    pd.testing.assert_frame_equal(
        drifting.loc[legit_late, untouched], steady.loc[legit_late, untouched]
    )
    ratio = drifting.loc[late, "Amount"].sum() / steady.loc[late, "Amount"].sum()
    assert ratio == pytest.approx(config.drift.amount_scale, rel=0.01)


def test_no_drift_when_start_frame_is_unset(settings) -> None:
    config = settings.generator.model_copy(
        update={
            "rows": 40_000,
            "drift": settings.generator.drift.model_copy(update={"start_frame": None}),
        }
    )
    data = generate(config, 12)
    frame = _frames(data, config)
    assert abs(data[frame >= 10]["V1"].median() - data[frame < 10]["V1"].median()) < 0.1
