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


def test_a_roc_auc_floor_holds_on_any_table_and_pr_auc_floor_is_optional() -> None:
    assert evaluate_gate(0.1, None, 0.05, candidate_roc_auc=0.8, min_roc_auc=0.6).passed
    low = evaluate_gate(0.9, None, 0.05, candidate_roc_auc=0.55, min_roc_auc=0.6)
    assert not low.passed and "ROC-AUC 0.5500 is below the minimum 0.6000" in low.reasons[0]


def test_a_champion_of_another_contract_is_refused_not_compared() -> None:
    from pipeline.register import lineage_mismatch

    fraud = [{"name": "V1", "type": "double"}, {"name": "Amount", "type": "double"}]
    credit = [{"name": "Home", "type": "string"}, {"name": "Amount", "type": "long"}]
    assert lineage_mismatch(fraud, fraud, "crispml-fraud", "3") is None
    line = lineage_mismatch(credit, fraud, "crispml-fraud", "3")
    assert line is not None and "\n" not in line
    assert "version 3 of 'crispml-fraud'" in line and "register.model_name" in line
    assert "['Home']" in line and "['V1']" in line and "['Amount']" in line
    verdict = evaluate_gate(0.95, 0.5, 0.05, 0.99, "3", other_lineage=line)
    # Never judged against the other data set's PR-AUC, and never passed.
    assert not verdict.passed and verdict.reasons == [line]
    assert verdict.champion_pr_auc is None
