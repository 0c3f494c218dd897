"""The champion/challenger comparison (pure) and its configuration.

The registry side (`crispml shadow report|promote` against a real MLflow registry and
a real service) is tested in tests/service/test_shadow.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_settings
from pipeline.evidence import Evidence, pr_auc
from pipeline.shadow import compare_pairs, evidence_of, margin_of

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = Evidence(confidence=0.95, resamples=300, min_positives=20, seed=0)


def _pairs(champion: np.ndarray, challenger: np.ndarray, y: np.ndarray | None) -> pd.DataFrame:
    n = len(champion)
    return pd.DataFrame(
        {
            "score_id": [f"s{i}" for i in range(n)],
            "champion_score": champion,
            "champion_decision": (champion >= 0.5).astype(int),
            "challenger_score": challenger,
            "challenger_decision": (challenger >= 0.5).astype(int),
            "label": pd.Series(y, dtype="float") if y is not None else np.nan,
        }
    )


def _data(n: int = 2000, rate: float = 0.05, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    good = np.clip(0.6 * y + rng.normal(0.2, 0.15, n), 0, 1)
    return rng, y, good


def test_no_labels_yet_gives_counts_and_no_verdict() -> None:
    _, _, good = _data()
    summary = compare_pairs(_pairs(good, good, None), "1", "2", 0.03, EVIDENCE)
    assert summary["verdict"] is None and summary["labelled_pairs"] == 0
    assert summary["pairs"] == 2000 and summary["champion"]["pr_auc"] is None
    assert "none labelled" in summary["reason"]


def test_the_same_model_passes_with_a_zero_difference() -> None:
    _, y, good = _data()
    summary = compare_pairs(_pairs(good, good, y), "1", "2", 0.03, EVIDENCE)
    assert summary["verdict"] == "passed"
    assert summary["difference"] == summary["low"] == summary["high"] == 0
    assert summary["disagreements"] == 0
    assert summary["champion"]["pr_auc"] == pytest.approx(pr_auc(y, good))


def test_a_worse_challenger_fails_with_its_interval() -> None:
    rng, y, good = _data()
    noise = rng.random(len(y))
    summary = compare_pairs(_pairs(good, noise, y), "1", "2", 0.03, EVIDENCE)
    assert summary["verdict"] == "failed"
    assert summary["high"] < -0.03
    assert summary["challenger"]["pr_auc"] < summary["champion"]["pr_auc"]
    assert "worse beyond the margin" in summary["reason"]
    assert summary["disagreements"] > 0


def test_too_few_positives_is_insufficient_evidence_not_a_pass() -> None:
    _, y, good = _data(n=200, rate=0.05)
    summary = compare_pairs(_pairs(good, good, y), "1", "2", 0.03, EVIDENCE)
    assert summary["positives"] < EVIDENCE.min_positives
    assert summary["verdict"] == "insufficient_evidence"
    assert "not enough evidence" in summary["reason"]


def test_only_labelled_pairs_are_compared() -> None:
    _, y, good = _data()
    labels = pd.Series(y, dtype="float")
    labels.iloc[:500] = np.nan
    frame = _pairs(good, good, None).assign(label=labels)
    summary = compare_pairs(frame, "1", "2", 0.03, EVIDENCE)
    assert (summary["pairs"], summary["labelled_pairs"]) == (2000, 1500)
    assert summary["positives"] == int(y[500:].sum())


def test_the_shadow_settings_of_prod_and_the_defaults() -> None:
    prod = load_settings(ROOT, env="prod")
    registry = prod.environment.registry
    assert registry.challenger == "prod-challenger"
    assert registry.shadow.min_labelled_scores >= 1000 and registry.shadow.auto_promote
    assert margin_of(prod) == prod.environment.gates.registration.max_pr_auc_drop
    assert evidence_of(prod).resamples == prod.environment.gates.evidence.resamples
    dev = load_settings(ROOT, env="dev").environment.registry
    assert dev.challenger == "dev-challenger" and dev.shadow.auto_promote is False
