"""Curate (CRISP-DM: data preparation, algorithm-specific): split by frame, fit the features.

Splitting by frame rather than at random keeps the test frame strictly later than the
training frames, as production will be: a random split would leak the future.
"""

from __future__ import annotations

import pandas as pd

from pipeline.config import Settings
from pipeline.contract import check_two_classes
from pipeline.features import TransactionFeatures
from pipeline.ingest import FRAME

SPLITS = ("train", "valid", "test")


def split_by_frame(data: pd.DataFrame, settings: Settings) -> dict[str, pd.DataFrame]:
    """Train, valid and test sets, each holding only the frames params assign to it."""
    split = settings.curate.split
    parts = {
        name: data[data[FRAME].isin(getattr(split, name))].reset_index(drop=True) for name in SPLITS
    }
    target = settings.contract.target
    for name, part in parts.items():
        frames = getattr(split, name)
        if part.empty:
            from pipeline.errors import DataError

            raise DataError(
                FRAME, f"curate.split.{name} has rows", frames, "no rows in those frames"
            )
        check_two_classes(part, target, where=f"the {name} split (frames {frames})")
    return parts


def fit_features(train: pd.DataFrame, settings: Settings) -> TransactionFeatures:
    options = settings.curate.features
    contract = settings.contract
    log_amount = options.log_amount if options.log_amount in contract.features else None
    transformer = TransactionFeatures(
        time_column=contract.time_column,
        feature_columns=tuple(contract.features),
        log_amount=log_amount,
        time_of_day=options.time_of_day,
        scale=options.scale,
    )
    return transformer.fit(train[contract.model_inputs])


def run(settings: Settings) -> dict:
    """Entry point: prepared training frames -> data/curated/{train,valid,test}, features."""
    import pickle

    from pipeline.io import atomic_dir, atomic_path
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    data = pd.concat(
        [pd.read_parquet(layout.frame_file(layout.prepared, n)) for n in settings.frames.train],
        ignore_index=True,
    )
    parts = split_by_frame(data, settings)
    features = fit_features(parts["train"], settings)
    with atomic_dir(layout.curated) as tmp:
        for name, part in parts.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
    with atomic_path(layout.features) as tmp, open(tmp, "wb") as handle:
        pickle.dump(features, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        name: {"rows": len(p), "positives": int(p[settings.contract.target].sum())}
        for name, p in parts.items()
    }
