from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Cost, Slice
from pipeline.report import (
    choose_threshold,
    classification_metrics,
    expected_cost,
    plot_tables,
    recall_at_precision,
    slice_metrics,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=5000) < 0.05).astype(int)
    score = np.clip(0.6 * y + rng.normal(0.2, 0.15, size=5000), 0, 1)
    return y, score


def test_chosen_threshold_has_the_lowest_cost_of_all_candidates(scored) -> None:
    y, score = scored
    cost = Cost(false_negative=200, false_positive=5)
    best = choose_threshold(y, score, cost)
    best_cost = expected_cost(y, (score >= best).astype(int), cost)
    for other in np.linspace(0, 1, 101):
        assert best_cost <= expected_cost(y, (score >= other).astype(int), cost)


def test_costlier_misses_lower_the_threshold(scored) -> None:
    y, score = scored
    cheap = choose_threshold(y, score, Cost(false_negative=10, false_positive=5))
    dear = choose_threshold(y, score, Cost(false_negative=1000, false_positive=5))
    assert dear < cheap


def test_metrics_agree_with_a_hand_count() -> None:
    y = np.array([1, 1, 0, 0, 0])
    score = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    m = classification_metrics(y, score, 0.5, Cost(false_negative=100, false_positive=1), 0.9)
    assert (m["precision"], m["recall"], m["flagged"]) == (0.5, 0.5, 2)
    # One missed positive and one false alarm; the flagged positive costs nothing.
    assert m["expected_cost"] == 100 + 1
    assert m["roc_auc"] == pytest.approx(5 / 6)


def test_recall_at_precision() -> None:
    y = np.array([1, 1, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert recall_at_precision(y, score, 1.0) == pytest.approx(2 / 3)


def test_slices_and_plot_tables(scored) -> None:
    import pandas as pd

    y, score = scored
    frame = pd.DataFrame({"Amount": np.linspace(0, 2000, len(y))})
    slices = slice_metrics(
        frame,
        y,
        score,
        0.5,
        [Slice(column="Amount", edges=[0, 10, 100, 1000])],
        Cost(false_negative=1, false_positive=1),
    )
    assert sum(band["rows"] for band in slices["Amount"].values()) == len(y)
    assert "1000+" in slices["Amount"]
    tables = plot_tables(y, score, 0.5, 10)
    assert set(tables) == {"precision_recall.csv", "roc.csv", "confusion.csv", "calibration.csv"}
    assert len(tables["confusion.csv"]) == len(y)
    assert len(tables["roc.csv"]) <= 400


def test_validation_widens_until_the_threshold_has_enough_positives() -> None:
    """~20 positives per frame (qa's half sample): one validation frame is too few."""
    from pipeline.curate import widen_validation

    positives = {1: 20, 2: 21, 3: 19, 4: 22, 5: 18, 6: 20}
    assert widen_validation(positives, [1, 2, 3, 4], [5], 30) == ([1, 2, 3], [4, 5])
    assert widen_validation(positives, [1, 2, 3, 4], [5], 10) == ([1, 2, 3, 4], [5])
    # One training frame always stays, however few positives there are.
    assert widen_validation(positives, [1, 2], [5], 1_000) == ([1], [2, 5])
