"""Curate (CRISP-DM: data preparation, algorithm-specific): split by frame, plan the features.

Splitting by frame rather than at random keeps the test frame strictly later than the
training frames, as production will be: a random split would leak the future.

The feature plan (which input is a number, a category, a log or a clock, and which
categories training saw) is written as JSON. Train fits the encoders from it inside
the model, so no pickled code passes between stages.
"""

from __future__ import annotations

import pandas as pd

from pipeline.config import FRAME, Settings
from pipeline.contract import check_two_classes
from pipeline.errors import DataError
from pipeline.features import FeaturePlan, plan_features

SPLITS = ("train", "valid", "test")


def widen_validation(
    positives_per_frame: dict[int, int], train: list[int], valid: list[int], minimum: int
) -> tuple[list[int], list[int]]:
    """Move the newest training frames into validation until it holds `minimum` positives.

    A cost-optimal threshold picked on 20 positives moves with every one of them. Taking
    the frames just before validation keeps validation later than training, and one
    training frame always stays, so a small table still trains (with a warning upstream).
    """
    train, valid = sorted(train), sorted(valid)
    while sum(positives_per_frame.get(n, 0) for n in valid) < minimum and len(train) > 1:
        valid = sorted([train.pop(), *valid])
    return train, valid


def split_frames(data: pd.DataFrame, settings: Settings) -> dict[str, list[int]]:
    """Which frames each split gets: params' split, with validation widened when needed."""
    split = settings.curate.split
    target = settings.contract.target
    positives = data.groupby(FRAME)[target].sum().astype(int).to_dict()
    train, valid = widen_validation(
        positives, list(split.train), list(split.valid), settings.curate.min_valid_positives
    )
    return {"train": train, "valid": valid, "test": list(split.test)}


def split_by_frame(data: pd.DataFrame, settings: Settings) -> dict[str, pd.DataFrame]:
    """Train, valid and test sets, each holding only the frames assigned to it."""
    assigned = split_frames(data, settings)
    parts = {name: data[data[FRAME].isin(assigned[name])].reset_index(drop=True) for name in SPLITS}
    target = settings.contract.target
    for name, part in parts.items():
        frames = assigned[name]
        if part.empty:
            raise DataError(
                FRAME, f"curate.split.{name} has rows", frames, "no rows in those frames"
            )
        check_two_classes(part, target, where=f"the {name} split (frames {frames})")
    return parts


def curate(data: pd.DataFrame, settings: Settings) -> tuple[dict[str, pd.DataFrame], FeaturePlan]:
    parts = split_by_frame(data, settings)
    return parts, plan_features(settings, parts["train"])


def run(settings: Settings) -> dict:
    """Entry point: prepared training frames -> data/curated/{train,valid,test}, feature plan."""
    from pipeline.io import atomic_dir, write_json
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    data = pd.concat(
        [pd.read_parquet(layout.frame_file(layout.prepared, n)) for n in settings.frames.train],
        ignore_index=True,
    )
    parts, plan = curate(data, settings)
    summary = {
        name: {
            "frames": sorted(int(n) for n in p[FRAME].unique()),
            "rows": len(p),
            "positives": int(p[settings.contract.target].sum()),
        }
        for name, p in parts.items()
    }
    with atomic_dir(layout.curated) as tmp:
        for name, part in parts.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
        # Report and register read which frames each split really got from here.
        write_json(tmp / "split.json", summary)
    write_json(layout.features, plan.as_dict())
    return summary
