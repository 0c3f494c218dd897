"""Verify at 10x the rows: the same samples read frame by frame, a bounded quality report,
and a bootstrap whose cost does not grow with the negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import evidence
from pipeline.evidence import Evidence, estimate
from pipeline.verify import judge_quality, sample_parts


@pytest.mark.parametrize("size", [1, 7, 40, 500])
def test_sampling_parts_one_at_a_time_takes_the_rows_of_the_whole(size) -> None:
    rng = np.random.default_rng(1)
    parts = [
        pd.DataFrame(
            {"a": rng.normal(size=n), "b": pd.Series([f"v{i}" for i in range(n)], dtype=object)}
        )
        for n in (13, 0, 21, 6)
    ]
    whole = pd.concat(parts, ignore_index=True)
    expected = whole.sample(n=min(len(whole), size), random_state=5).reset_index(drop=True)
    read: list[int] = []

    def part(i: int) -> pd.DataFrame:
        read.append(i)
        return parts[i]

    got = sample_parts([len(p) for p in parts], part, size, 5)
    pd.testing.assert_frame_equal(got, expected)
    assert 1 not in read  # an empty part is never read


def _scores(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (rng.uniform(size=rows) < 0.01).astype("int64")
    score = np.clip(rng.normal(0.1, 0.1, rows) + label * 0.4, 0, 1)
    return pd.DataFrame({"label": label, "score": score, "decision": (score > 0.3).astype("int64")})


def test_the_quality_report_is_sampled_but_rows_and_pr_auc_are_all(tmp_path, monkeypatch) -> None:
    import pipeline.verify as verify

    scored = _scores(6000)
    whole = judge_quality(scored, tmp_path / "whole.html", Evidence(resamples=50), seed=0)
    assert whole["quality"]["report_rows"] == whole["quality"]["rows"] == 6000
    monkeypatch.setattr(verify, "QUALITY_MAX_ROWS", 2000)
    sampled = judge_quality(scored, tmp_path / "sampled.html", Evidence(resamples=50), seed=0)
    assert sampled["quality"]["report_rows"] == 2000
    assert sampled["quality"]["rows"] == 6000
    assert sampled["quality"]["positives"] == int(scored["label"].sum())
    # What the gate judges does not depend on the sample.
    assert sampled["interval"] == whole["interval"]
    assert sampled["quality"]["pr_auc"] == pytest.approx(whole["quality"]["pr_auc"])


def test_counting_negatives_per_step_is_the_same_bootstrap(monkeypatch) -> None:
    scored = _scores(60_000, seed=3)
    y, s = scored["label"].to_numpy(), scored["score"].to_numpy()
    rows = estimate(y, s, Evidence(resamples=400))
    monkeypatch.setattr(evidence, "ROW_DRAWS_MAX_NEGATIVES", 1000)
    counts = estimate(y, s, Evidence(resamples=400))
    assert counts.pr_auc == rows.pr_auc
    assert counts.low == pytest.approx(rows.low, abs=0.02)
    assert counts.high == pytest.approx(rows.high, abs=0.02)
    assert counts.low < counts.pr_auc < counts.high
