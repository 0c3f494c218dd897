"""Scores the service answered are verified like batch frames: per day, against labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pipeline.evidence import FAILED, Evidence
from pipeline.store import ScoreStore, new_score_id, shadow_score_id
from pipeline.verify import evaluate_verify_gate, online_quality, staleness

DAY1 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def _row(record: str, score: float, at: datetime, version: str = "1", shadow_of=None) -> dict:
    return {
        "score_id": shadow_score_id(shadow_of, version) if shadow_of else new_score_id(),
        "record_id": record,
        "frame": None,
        "score": float(score),
        "decision": int(score >= 0.5),
        "threshold": 0.5,
        "model_name": "m",
        "model_version": version,
        "run_id": f"run-{version}",
        "git_commit": "c" * 40,
        "environment": "dev",
        "channel": "api",
        "source": "api:/v1/score",
        "scored_at": at,
        "shadow": shadow_of is not None,
        "shadow_of": shadow_of,
    }


@pytest.fixture
def store(tmp_path):
    store = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
    store.migrate()
    yield store
    store.dispose()


def _fill(store: ScoreStore, day: datetime, n: int, positives: int, separation: float, seed: int):
    """n answered scores on `day`, `positives` of them fraud, with labels, plus shadows."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[:positives] = 1
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * y - 3)))
    answered = [_row(f"{day:%d}-{i}", s, day) for i, s in enumerate(scores)]
    # A challenger in shadow scores everything as fraud: it must not count here.
    shadows = [_row(a["record_id"], 0.99, day, "2", a["score_id"]) for a in answered]
    store.insert_scores(answered + shadows)
    store.upsert_labels(
        {
            "environment": "dev",
            "record_id": a["record_id"],
            "label": int(label),
            "source": "POST /v1/labels",
            "labeled_at": day + timedelta(hours=6),
        }
        for a, label in zip(answered, y, strict=True)
    )


def test_online_scores_are_verified_per_day_and_shadows_stay_out(store) -> None:
    _fill(store, DAY1, 3_000, 60, separation=4.0, seed=1)
    _fill(store, DAY2, 3_000, 8, separation=4.0, seed=2)
    result = online_quality(store, "dev", "m", "1", Evidence(resamples=300, min_positives=30))
    summary = result["summary"]
    assert summary["labelled_scores"] == 6_000 and summary["labelled_positives"] == 68
    assert list(summary["days"]) == ["2026-11-30", "2026-12-01"]
    first, second = summary["days"].values()
    assert first["labelled_positives"] == 60 and first["pr_auc_interval"] is not None
    assert first["pr_auc"] > 0.5  # the answered model separates well; the shadow (0.99) would not
    # Eight positives are too few for an interval: said, not silently judged.
    assert second["labelled_positives"] == 8 and second["pr_auc_interval"] is None
    assert result["estimate"].enough


def test_a_poor_online_model_fails_verify_though_the_batch_frames_are_fine(store) -> None:
    _fill(store, DAY1, 4_000, 80, separation=0.3, seed=3)
    online = online_quality(store, "dev", "m", "1", Evidence(resamples=300))["estimate"]
    verdict = evaluate_verify_gate(0.0, None, 0.8, 0.5, 0.2, online=online)
    assert verdict.verdict == FAILED
    assert verdict.reasons[0].startswith("online realised PR-AUC")


def test_no_online_scores_is_an_empty_section_not_an_error(store) -> None:
    result = online_quality(store, "dev", "m", "1", Evidence())
    assert result == {"estimate": None, "summary": {"labelled_scores": 0, "days": {}}}


def test_staleness_says_how_old_the_model_and_its_labels_are() -> None:
    now = datetime.now(UTC)
    old = staleness((now - timedelta(days=5)).timestamp(), now - timedelta(days=2), 3)
    assert old["stale"] and 4.99 < old["model_age_days"] < 5.01
    assert 1.99 < old["labelled_data_age_days"] < 2.01
    fresh = staleness((now - timedelta(days=1)).timestamp(), None, 3)
    assert not fresh["stale"] and fresh["labelled_data_age_days"] is None
    assert not staleness(None, None, None)["stale"]
