"""Ingest (CRISP-DM: data understanding): source -> validated, framed, sampled Parquet.

The contract is checked before anything is written, so a bad source leaves the
previous outputs untouched. Sampling is stratified on (frame, target) because a
plain random sample of a 0.17 % class can lose every positive of a frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.contract import validate

FRAME = "frame"


def assign_frames(frame: pd.DataFrame, time_column: str, count: int) -> pd.Series:
    """Equal-width time windows between the first and the last timestamp, numbered from 1."""
    time = frame[time_column].astype("float64")
    start, end = float(time.min()), float(time.max())
    width = (end - start) / count if end > start else 1.0
    frames = np.floor((time - start) / width).astype(int) + 1
    return frames.clip(1, count).rename(FRAME)


def stratified_sample(
    frame: pd.DataFrame, by: list[str], fraction: float, seed: int, target: str
) -> pd.DataFrame:
    """Keep `fraction` of every (frame, class) group, and at least one row of a positive one."""
    if fraction >= 1.0:
        return frame
    parts = []
    for key, group in frame.groupby(by, sort=True):
        keys = key if isinstance(key, tuple) else (key,)
        wanted = round(len(group) * fraction)
        if dict(zip(by, keys, strict=True)).get(target, 0) != 0:
            wanted = max(wanted, 1)
        parts.append(group.sample(n=min(wanted, len(group)), random_state=seed))
    return pd.concat(parts).sort_index()


def ingest(raw: pd.DataFrame, settings: Settings) -> tuple[dict[int, pd.DataFrame], dict]:
    """Validate, frame and sample. Returns one DataFrame per frame and a summary."""
    contract = settings.contract
    data = validate(raw, contract)
    data[FRAME] = assign_frames(data, contract.time_column, settings.frames.count)
    env_data = settings.environment.data
    data = stratified_sample(
        data,
        [FRAME, contract.target],
        env_data.sample_fraction,
        env_data.sample_seed,
        contract.target,
    ).reset_index(drop=True)
    frames = {
        n: data[data[FRAME] == n].reset_index(drop=True)
        for n in range(1, settings.frames.count + 1)
    }
    summary = {
        "source_rows": len(raw),
        "rows": len(data),
        "sample_fraction": env_data.sample_fraction,
        "positives": int(data[contract.target].sum()),
        "frames": {
            str(n): {"rows": len(f), "positives": int(f[contract.target].sum())}
            for n, f in frames.items()
        },
    }
    return frames, summary


def run(settings: Settings) -> dict:
    """Entry point: source -> data/ingested/frame_<n>.parquet and reports/ingest.json."""
    from pipeline.io import atomic_dir, write_json
    from pipeline.layout import Layout
    from pipeline.sources import describe, read_source

    layout = Layout(settings.root)
    raw = read_source(settings)
    frames, summary = ingest(raw, settings)
    summary["source"] = describe(settings.environment.data.source, settings)
    with atomic_dir(layout.ingested) as tmp:
        for number, part in frames.items():
            part.to_parquet(layout.frame_file(tmp, number), index=False)
    write_json(layout.ingest_report, summary)
    return summary
