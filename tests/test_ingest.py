from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import Frames
from pipeline.errors import DataError
from pipeline.generator import generate
from pipeline.ingest import assign_frames, ingest, stratified_sample


def _frames(by: str = "width", count: int = 12, period: str | None = None) -> Frames:
    return Frames(count=count, by=by, period=period, train=[1], score=[count])


def test_frames_are_equal_width_time_windows() -> None:
    data = pd.DataFrame({"Time": [0.0, 9.9, 10.0, 59.0, 119.9, 120.0]})
    assert assign_frames(data, "Time", _frames()).tolist() == [1, 1, 2, 6, 12, 12]


def test_equal_count_frames_follow_quantiles_of_sparse_time() -> None:
    # Most rows early, a few late: equal-width windows would leave the middle empty.
    data = pd.DataFrame({"Time": [1, 2, 3, 4, 5, 6, 1000, 2000]})
    frames = assign_frames(data, "Time", _frames("count", count=4))
    assert frames.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_without_a_time_column_frames_follow_row_order() -> None:
    data = pd.DataFrame({"x": range(10)})
    assert assign_frames(data, None, _frames(count=5)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_calendar_periods_of_a_datetime_column() -> None:
    stamps = pd.to_datetime(["2024-01-03", "2024-01-31", "2024-02-01", "2024-04-30"])
    data = pd.DataFrame({"when": stamps})
    assert assign_frames(data, "when", _frames("period", 4, "month")).tolist() == [1, 1, 2, 4]
    weeks = assign_frames(data, "when", _frames("period", 20, "week")).tolist()
    assert weeks[0] == 1 and weeks[1] == 5  # Jan 3 (week 1) and Jan 31 (week 5)
    with pytest.raises(DataError, match=r"frames\.count 3 months"):
        assign_frames(data, "when", _frames("period", 3, "month"))


def test_stratified_sample_keeps_rare_positives_in_every_frame() -> None:
    data = pd.DataFrame({"frame": [1] * 1000 + [2] * 1000, "y": ([1] + [0] * 999) * 2})
    sample = stratified_sample(data, ["frame", "y"], 0.01, seed=3, target="y")
    assert sample.groupby("frame")["y"].sum().tolist() == [1, 1]
    assert len(sample) == 2 + 2 * round(999 * 0.01)
    again = stratified_sample(data, ["frame", "y"], 0.01, seed=3, target="y")
    pd.testing.assert_frame_equal(sample, again)


def test_ingest_splits_every_row_into_exactly_one_frame(settings) -> None:
    raw = generate(settings.generator, settings.frames.count)
    frames, summary = ingest(raw, settings)
    assert sorted(frames) == list(range(1, 13))
    assert sum(len(f) for f in frames.values()) == len(raw) == summary["rows"]
    assert summary["positives"] == int(raw["Class"].sum())
