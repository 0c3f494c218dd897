"""Tests for pipeline.drift_and_quality (Evidently-backed drift and quality summaries)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from pipeline.drift_and_quality import drift_summary, quality_summary

COLS = [f"f{i}" for i in range(6)]
DRIFT_KEYS = {
    "drift_share",
    "drifted_columns",
    "columns",
    "reference_rows",
    "current_rows",
    "method",
    "per_column",
}
QUALITY_KEYS = {
    "rows",
    "positives",
    "predicted_positives",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "pr_auc",
    "reference_rows",
    "html",
    "reason",
}


def _features(n: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, len(COLS))), columns=COLS)
    df["other"] = "untouched"  # non-numeric column outside `columns` must be ignored
    for col, delta in (shift or {}).items():
        df[col] = df[col] + delta
    return df


def _scored(n: int, seed: int, threshold: float = 0.3) -> pd.DataFrame:
    """A decent scorer whose decisions use a non-0.5 threshold on purpose."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    logit = (2 * label - 1) * 2.0 + rng.normal(0, 1.0, n)
    score = 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {"label": label, "score": score, "decision": (score >= threshold).astype(int)}
    )


# Degenerate single-class inputs make sklearn/Evidently warn (ill-defined recall,
# 0/0 rates); the module reports that condition in "reason", so the warnings are expected.
expect_degenerate_warnings = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::RuntimeWarning"
)


def _assert_html(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 0
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html")
    assert "</html>" in text.lower()
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# --------------------------------------------------------------------------- drift


def test_drift_no_shift_reports_little_drift_and_is_json():
    ref, cur = _features(1500, 1), _features(1500, 2)
    out = drift_summary(ref, cur, COLS, None)

    assert set(out) == DRIFT_KEYS
    json.dumps(out, allow_nan=False)
    assert out["columns"] == 6
    assert out["reference_rows"] == 1500 and out["current_rows"] == 1500
    assert out["drift_share"] <= 1 / 6
    assert set(out["per_column"]) == set(COLS)
    # >1000 reference rows: Evidently's default numeric test is normed Wasserstein.
    assert "wasserstein" in out["method"].lower()
    # Evidently's dataset-level count agrees with its own per-column verdicts.
    assert out["drifted_columns"] == sum(v["drifted"] for v in out["per_column"].values())
    for v in out["per_column"].values():
        assert isinstance(v["score"], float) and isinstance(v["drifted"], bool)


def test_drift_mean_shift_in_three_of_six_columns(tmp_path):
    shifted = ["f0", "f2", "f4"]
    ref = _features(1200, 3)
    cur = _features(1000, 4, shift=dict.fromkeys(shifted, 3.0))
    ref_before, cur_before = ref.copy(deep=True), cur.copy(deep=True)
    html = tmp_path / "nested" / "dir" / "drift.html"  # Path, parents do not exist

    out = drift_summary(ref, cur, COLS, html)

    assert out["drifted_columns"] >= 3
    assert out["drift_share"] >= 0.5
    for col in shifted:
        assert out["per_column"][col]["drifted"] is True
    _assert_html(html)
    pd.testing.assert_frame_equal(ref, ref_before)
    pd.testing.assert_frame_equal(cur, cur_before)


def test_drift_sampling_is_capped_and_deterministic(tmp_path):
    ref, cur = _features(2000, 5), _features(800, 6, shift={"f1": 0.3})
    a = drift_summary(ref, cur, COLS, str(tmp_path / "a.html"), max_rows=500, seed=7)
    b = drift_summary(ref, cur, COLS, None, max_rows=500, seed=7)

    assert a["reference_rows"] == 500 and a["current_rows"] == 500
    assert a == b
    _assert_html(tmp_path / "a.html")


def test_drift_column_threshold_is_passed_to_evidently():
    ref, cur = _features(1500, 8), _features(1500, 9)
    out = drift_summary(ref, cur, COLS[:2], None, column_threshold=0.5)
    assert out["columns"] == 2
    assert all(v["threshold"] == 0.5 for v in out["per_column"].values())
    assert out["drifted_columns"] == 0


@pytest.mark.parametrize(
    ("ref_rows", "cur_rows", "columns", "match"),
    [
        (0, 10, COLS, "reference has zero rows"),
        (10, 0, COLS, "current has zero rows"),
        (10, 10, [], "empty"),
        (10, 10, ["f0", "nope"], "lacks columns"),
        (10, 10, ["f0", "other"], "not numeric"),
        (10, 10, ["f0", "f0"], "duplicates"),
    ],
)
def test_drift_rejects_bad_input(ref_rows, cur_rows, columns, match):
    ref, cur = _features(10, 1).iloc[:ref_rows], _features(10, 2).iloc[:cur_rows]
    with pytest.raises(ValueError, match=match):
        drift_summary(ref, cur, columns, None)


# ------------------------------------------------------------------------- quality


def test_quality_good_scorer_uses_decisions_and_writes_html(tmp_path):
    scored = _scored(1500, 10)
    before = scored.copy(deep=True)
    html = tmp_path / "q" / "quality.html"

    out = quality_summary(scored, html)

    assert set(out) == QUALITY_KEYS
    json.dumps(out, allow_nan=False)
    assert out["rows"] == 1500
    assert out["positives"] == int(scored["label"].sum())
    assert out["roc_auc"] > 0.9
    assert out["pr_auc"] > 0.9
    # Threshold-dependent metrics describe the `decision` column (threshold 0.3), not
    # Evidently's own 0.5 re-thresholding of the probabilities.
    y, d = scored["label"], scored["decision"]
    assert out["accuracy"] == pytest.approx(accuracy_score(y, d))
    assert out["accuracy"] != pytest.approx(accuracy_score(y, scored["score"] >= 0.5))
    assert out["precision"] == pytest.approx(precision_score(y, d))
    assert out["recall"] == pytest.approx(recall_score(y, d))
    assert out["f1"] == pytest.approx(f1_score(y, d))
    assert out["html"] == str(html)
    assert out["reason"] is None
    _assert_html(html)
    pd.testing.assert_frame_equal(scored, before)


def test_quality_with_reference(tmp_path):
    scored, reference = _scored(600, 11), _scored(900, 12)
    ref_before = reference.copy(deep=True)
    out = quality_summary(scored, tmp_path / "q.html", reference=reference)
    assert out["reference_rows"] == 900
    assert out["rows"] == 600
    assert out["roc_auc"] > 0.9
    _assert_html(tmp_path / "q.html")
    pd.testing.assert_frame_equal(reference, ref_before)


@expect_degenerate_warnings
def test_quality_single_class_labels_gives_none_aucs_but_still_reports(tmp_path):
    scored = _scored(400, 13).assign(label=0)  # decisions still mixed
    out = quality_summary(scored, tmp_path / "single.html")

    json.dumps(out, allow_nan=False)
    assert out["positives"] == 0
    assert out["roc_auc"] is None and out["pr_auc"] is None
    assert out["accuracy"] == pytest.approx(1 - scored["decision"].mean())
    assert "one label class" in out["reason"]
    _assert_html(tmp_path / "single.html")


@expect_degenerate_warnings
def test_quality_when_evidently_cannot_cope_skips_html_with_reason(tmp_path):
    # Labels and decisions together hold one class: Evidently's preset raises.
    scored = _scored(300, 14).assign(label=1, decision=1)
    html = tmp_path / "never.html"
    out = quality_summary(scored, html)

    json.dumps(out, allow_nan=False)
    assert out["html"] is None
    assert out["reason"]
    assert out["roc_auc"] is None and out["pr_auc"] is None
    assert out["rows"] == 300 and out["positives"] == 300
    assert not html.exists()


@expect_degenerate_warnings
def test_quality_single_class_reference_falls_back_to_current_only(tmp_path):
    scored, reference = _scored(500, 15), _scored(300, 16).assign(label=0)
    out = quality_summary(scored, tmp_path / "fb.html", reference=reference)
    assert out["reference_rows"] is None
    assert "with reference" in out["reason"]
    assert out["roc_auc"] > 0.9
    _assert_html(tmp_path / "fb.html")


def test_quality_zero_rows_raises():
    empty = _scored(10, 17).iloc[:0]
    with pytest.raises(ValueError, match="zero rows"):
        quality_summary(empty, None)
    with pytest.raises(ValueError, match="zero rows"):
        quality_summary(_scored(10, 17), None, reference=empty)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda df: df.drop(columns="score"), "lacks columns"),
        (lambda df: df.assign(label=df["label"] * 2), "must be 0/1"),
        (lambda df: df.assign(score=np.nan), "NaN"),
    ],
)
def test_quality_rejects_bad_input(mutate, match):
    with pytest.raises(ValueError, match=match):
        quality_summary(mutate(_scored(50, 18)), None)
