from __future__ import annotations

import pandas as pd

from pipeline.generator import generate
from pipeline.ingest import assign_frames, ingest, stratified_sample


def test_frames_are_equal_width_time_windows() -> None:
    data = pd.DataFrame({"Time": [0.0, 9.9, 10.0, 59.0, 119.9, 120.0]})
    assert assign_frames(data, "Time", 12).tolist() == [1, 1, 2, 6, 12, 12]


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
