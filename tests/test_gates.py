from __future__ import annotations

from pipeline.register import evaluate_gate
from pipeline.verify import evaluate_verify_gate


def test_register_gate_passes_a_good_first_model() -> None:
    verdict = evaluate_gate(0.8, min_pr_auc=0.5, max_pr_auc_drop=0.05)
    assert verdict.passed and verdict.reasons == []


def test_register_gate_fails_below_minimum_and_on_nan() -> None:
    assert not evaluate_gate(0.4, 0.5, 0.05).passed
    assert not evaluate_gate(float("nan"), 0.5, 0.05).passed


def test_register_gate_fails_on_regression_against_the_champion() -> None:
    verdict = evaluate_gate(0.70, 0.5, 0.05, champion_pr_auc=0.80, champion_version="3")
    assert not verdict.passed
    assert "version 3" in verdict.reasons[0]
    assert evaluate_gate(0.78, 0.5, 0.05, champion_pr_auc=0.80, champion_version="3").passed


def test_verify_gate_on_drift_and_on_realised_quality() -> None:
    assert evaluate_verify_gate(0.1, 0.8, 0.85, max_drift_share=0.3, max_pr_auc_drop=0.2).passed
    drift = evaluate_verify_gate(0.5, 0.8, 0.85, max_drift_share=0.3, max_pr_auc_drop=0.2)
    assert not drift.passed and "drift share" in drift.reasons[0]
    quality = evaluate_verify_gate(0.1, 0.5, 0.85, max_drift_share=0.3, max_pr_auc_drop=0.2)
    assert not quality.passed and "realised PR-AUC" in quality.reasons[0]
    assert evaluate_verify_gate(0.1, None, 0.85, 0.3, 0.2).passed  # no labels yet: nothing to judge
