from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipeline.evidence import (
    FAILED,
    INSUFFICIENT,
    PASSED,
    Evidence,
    compare_models,
    estimate,
    pr_auc,
)
from pipeline.register import evaluate_gate
from pipeline.verify import evaluate_verify_gate


def _scores(y: np.ndarray, separation: float, rng: np.random.Generator) -> np.ndarray:
    """A model whose positives score `separation` standard deviations above negatives."""
    return 1 / (1 + np.exp(-(rng.normal(size=len(y)) + separation * y - 3)))


@pytest.fixture(scope="module")
def frame() -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(7)
    y = (rng.random(40_000) < 0.003).astype(int)  # ~120 positives, a fraud-like rate
    return y, rng


def test_weighted_pr_auc_is_sklearns_average_precision(frame) -> None:
    y, rng = frame
    scores = np.round(_scores(y, 2.0, rng), 2)  # rounding makes ties, which sklearn groups
    assert pr_auc(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_a_known_better_model_passes_and_a_known_worse_one_fails(frame) -> None:
    y, rng = frame
    champion = _scores(y, 2.5, rng)
    better = _scores(y, 4.0, rng)
    worse = _scores(y, 1.0, rng)
    evidence = Evidence(resamples=500, min_positives=30)
    up = compare_models(y, better, champion, margin=0.03, evidence=evidence)
    assert up.verdict == PASSED and up.low > 0, up.reason
    down = compare_models(y, worse, champion, margin=0.03, evidence=evidence)
    assert down.verdict == FAILED and down.high < -0.03, down.reason
    assert "worse beyond the margin 0.0300" in down.reason and "positives" in down.reason


def test_the_same_model_retrained_identically_always_passes(frame) -> None:
    y, rng = frame
    champion = _scores(y, 2.5, rng)
    same = compare_models(
        y, champion.copy(), champion, margin=0.0, evidence=Evidence(resamples=200)
    )
    assert same.passed and same.low == same.high == 0.0


def test_a_small_point_drop_of_a_near_identical_retrain_passes(frame) -> None:
    """A retrain with another seed scores nearly the same; a point drop alone is no failure."""
    y, rng = frame
    champion = _scores(y, 2.5, rng)
    logit = np.log(champion / (1 - champion))
    retrain = 1 / (1 + np.exp(-(logit + 0.15 * rng.normal(size=len(y)))))
    result = compare_models(y, retrain, champion, margin=0.05, evidence=Evidence(resamples=500))
    assert result.low < result.difference < result.high
    assert result.passed, result.reason
    # The same rows judged without the margin's slack: an interval reaching below -0.0 fails.
    strict = compare_models(y, retrain, champion, margin=0.0, evidence=Evidence(resamples=500))
    assert strict.passed == (strict.low >= 0.0)


def test_too_few_positives_is_not_enough_evidence_with_the_count() -> None:
    rng = np.random.default_rng(1)
    y = np.zeros(5_000, dtype=int)
    y[:12] = 1
    s = _scores(y, 3.0, rng)
    result = compare_models(y, s, s * 0.9, margin=0.05, evidence=Evidence(min_positives=30))
    assert result.verdict == INSUFFICIENT and not result.passed
    assert "12 positives" in result.reason and "at least 30" in result.reason
    realised = estimate(y, s, Evidence(min_positives=30))
    assert not realised.enough and realised.positives == 12


def test_register_gate_floors_and_evidence() -> None:
    assert evaluate_gate(0.8, min_pr_auc=0.5).passed
    assert not evaluate_gate(0.4, 0.5).passed
    assert not evaluate_gate(float("nan"), 0.5).passed
    few = evaluate_gate(0.9, 0.5, positives=12, min_positives=30)
    assert few.verdict == INSUFFICIENT and not few.passed
    assert "12 positives" in few.reasons[0]


def test_register_gate_fails_on_a_regression_against_the_champion(frame) -> None:
    y, rng = frame
    champion = _scores(y, 2.5, rng)
    worse = _scores(y, 1.0, rng)
    comparison = compare_models(y, worse, champion, 0.03, Evidence(resamples=300))
    verdict = evaluate_gate(
        pr_auc(y, worse), 0.0, comparison=comparison, champion_version="3", positives=int(y.sum())
    )
    assert verdict.verdict == FAILED
    assert verdict.reasons[0].startswith("against version 3:")
    assert verdict.comparison["high"] < -0.03


def test_verify_gate_on_drift_and_on_realised_quality(frame) -> None:
    y, rng = frame
    good = estimate(y, _scores(y, 3.0, rng), Evidence(resamples=300))
    poor = estimate(y, _scores(y, 0.5, rng), Evidence(resamples=300))
    expected = good.pr_auc
    assert evaluate_verify_gate(0.1, good, expected, 0.3, 0.2).passed
    drift = evaluate_verify_gate(0.5, good, expected, max_drift_share=0.3, max_pr_auc_drop=0.2)
    assert not drift.passed and "drift share" in drift.reasons[0]
    quality = evaluate_verify_gate(0.1, poor, expected, max_drift_share=0.3, max_pr_auc_drop=0.2)
    assert not quality.passed and "realised PR-AUC" in quality.reasons[0]
    assert "interval" in quality.reasons[0]
    # Within the interval of the allowed drop: not a failure.
    assert evaluate_verify_gate(0.1, good, good.high + 0.19, 0.3, 0.2).passed
    assert evaluate_verify_gate(0.1, None, 0.85, 0.3, 0.2).passed  # no labels yet


def test_verify_gate_says_when_labels_are_too_few() -> None:
    y = np.zeros(2_000, dtype=int)
    y[:5] = 1
    thin = estimate(y, np.linspace(1, 0, 2_000), Evidence(min_positives=30))
    verdict = evaluate_verify_gate(0.0, thin, 0.8, 0.3, 0.2)
    assert verdict.passed and verdict.verdict == INSUFFICIENT
    assert "5 labelled positives" in verdict.reasons[0]


def test_a_roc_auc_floor_holds_on_any_table_and_pr_auc_floor_is_optional() -> None:
    assert evaluate_gate(0.1, None, candidate_roc_auc=0.8, min_roc_auc=0.6).passed
    low = evaluate_gate(0.9, None, candidate_roc_auc=0.55, min_roc_auc=0.6)
    assert not low.passed and "ROC-AUC 0.5500 is below the minimum 0.6000" in low.reasons[0]


def test_a_champion_of_another_contract_is_refused_not_compared(frame) -> None:
    from pipeline.register import lineage_mismatch

    fraud = [{"name": "V1", "type": "double"}, {"name": "Amount", "type": "double"}]
    credit = [{"name": "Home", "type": "string"}, {"name": "Amount", "type": "long"}]
    assert lineage_mismatch(fraud, fraud, "crispml-fraud", "3") is None
    line = lineage_mismatch(credit, fraud, "crispml-fraud", "3")
    assert line is not None and "\n" not in line
    assert "version 3 of 'crispml-fraud'" in line and "register.model_name" in line
    assert "['Home']" in line and "['V1']" in line and "['Amount']" in line
    y, rng = frame
    s = _scores(y, 2.5, rng)
    comparison = compare_models(y, s, s, 0.05, Evidence(resamples=100))
    verdict = evaluate_gate(
        0.95, 0.5, comparison=comparison, champion_version="3", other_lineage=line
    )
    # Never judged against the other data set's PR-AUC, and never passed.
    assert not verdict.passed and verdict.reasons == [line]
    assert verdict.champion_pr_auc is None and verdict.comparison is None
