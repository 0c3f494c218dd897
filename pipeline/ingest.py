"""Ingest (CRISP-DM: data understanding): source -> validated, framed, sampled Parquet.

The contract is checked before anything is written, so a bad source leaves the
previous outputs untouched. Records without a declared id get one derived from their
content here, on the whole source, so ids do not depend on sampling. Sampling is
stratified on (frame, target) because a plain random sample of a 0.17 % class can
lose every positive of a frame.

The first half of the environment's privacy filter (`pipeline.privacy.minimise`) runs
here, before the first write: `data/ingested/`, and with it the DVC cache and remote,
never holds a direct identifier or, where the environment keys them, a raw id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import FRAME, Contract, Frames, Role, Settings
from pipeline.contract import Locate, derive_record_ids, row_locator, validate
from pipeline.errors import ConfigError, DataError
from pipeline.privacy import minimise

__all__ = ["FRAME", "REPEATED", "assign_frames", "ingest", "run", "stratified_sample"]

# A column ingest adds and prepare removes: True for a row whose whole content, direct
# identifiers included, an earlier row already has (see `repeated_rows`).
REPEATED = "_repeated"
# What `minimise` did, next to the frames it did it to: prepare reports it and checks it.
PRIVACY_RECORD = "privacy.json"

_PERIOD_CODES = {"day": "D", "week": "W", "month": "M"}


def _equal_count(order: np.ndarray, count: int) -> np.ndarray:
    """Frame numbers for rows taken in `order`: `count` windows of (nearly) equal size."""
    frames = np.empty(len(order), dtype="int64")
    frames[order] = np.arange(len(order)) * count // max(len(order), 1) + 1
    return frames


def assign_frames(frame: pd.DataFrame, time_column: str | None, options: Frames) -> pd.Series:
    """Frame number (from 1) of every row, the way `frames.by` says.

    With no time column the source's row order is its arrival order, so frames are
    equal-count windows of that order: the first rows train, the last rows are scored.
    """
    count = options.count
    if time_column is None:
        return pd.Series(_equal_count(np.arange(len(frame)), count), index=frame.index, name=FRAME)
    time = frame[time_column]
    if options.by == "period":
        periods = time.dt.to_period(_PERIOD_CODES[options.period or "day"])
        ordinals = periods.array.asi8
        frames = ordinals - ordinals.min() + 1
        if frames.max() > count:
            first, last = periods.min(), periods.max()
            raise DataError(
                time_column,
                f"frames.count {count} {options.period}s",
                f"{int(frames.max())} {options.period}s from {first} to {last}",
                "raise frames.count or choose a longer frames.period",
            )
        return pd.Series(frames, index=frame.index, name=FRAME)
    numeric = (
        time.astype("int64").astype("float64") if time.dtype.kind == "M" else time.astype("float64")
    )
    if options.by == "count":
        order = np.argsort(numeric.to_numpy(), kind="stable")
        return pd.Series(_equal_count(order, count), index=frame.index, name=FRAME)
    start, end = float(numeric.min()), float(numeric.max())
    width = (end - start) / count if end > start else 1.0
    frames = np.floor((numeric - start) / width).astype(int) + 1
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


def add_record_ids(data: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Fill the id column from content when the source has none (see derive_record_ids).

    Identifiers are left out of the hashed content: the hash has a public key, so with
    the rest of a prepared row in hand, trying candidate names (or exact ages and full
    postcodes) until the id matches would recover what the privacy filter removed.
    """
    id_column = contract.id_column
    if id_column in data.columns:
        return data
    identifying = {
        *contract.names(Role.DIRECT_IDENTIFIER),
        *contract.names(Role.QUASI_IDENTIFIER),
    }
    content = [c for c in data.columns if c not in (contract.target, FRAME, *identifying)]
    return data.assign(**{id_column: derive_record_ids(data, content)})


def repeated_rows(data: pd.DataFrame, contract: Contract) -> pd.Series:
    """True for each row whose content an earlier row has, in the order prepare reads frames.

    Deciding is prepare's job (`prepare.drop_duplicates`), but only ingest still sees
    the direct identifiers: two customers whose other values agree are two records, not
    one sent twice. The id and the frame are not content (see prepare).
    """
    content = [c for c in data.columns if c not in (contract.id_column, FRAME, REPEATED)]
    in_frame_order = data.sort_values(FRAME, kind="stable") if FRAME in data.columns else data
    return in_frame_order.duplicated(subset=content).reindex(data.index)


def ingest(
    raw: pd.DataFrame,
    settings: Settings,
    locate: Locate | None = None,
    key: bytes | None = None,
) -> tuple[dict[int, pd.DataFrame], dict]:
    """Validate, add ids, frame, sample and minimise. Returns one DataFrame per frame and a
    summary; `key` is the pseudonymisation key when the environment keys ids."""
    contract = settings.contract
    if REPEATED in contract.by_name:
        raise ConfigError(f"contract column name {REPEATED!r} is reserved for ingest")
    data = validate(raw, contract, locate)
    derived = contract.id_column not in data.columns
    data = add_record_ids(data, contract)
    data[FRAME] = assign_frames(data, contract.time_column, settings.frames)
    env_data = settings.environment.data
    data = stratified_sample(
        data,
        [FRAME, contract.target],
        env_data.sample_fraction,
        env_data.sample_seed,
        contract.target,
    ).reset_index(drop=True)
    data[REPEATED] = repeated_rows(data, contract)
    data, privacy = minimise(data, contract, settings.environment.privacy, key)
    frames = {
        n: data[data[FRAME] == n].reset_index(drop=True)
        for n in range(1, settings.frames.count + 1)
    }
    summary = {
        "source_rows": len(raw),
        "rows": len(data),
        "sample_fraction": env_data.sample_fraction,
        "positives": int(data[contract.target].sum()),
        "positive_class": contract.target_spec.positive_class,
        "ids": "derived from content" if derived else f"column {contract.id_column}",
        "frames_by": "row order" if contract.time_column is None else settings.frames.by,
        "frames": {
            str(n): {"rows": len(f), "positives": int(f[contract.target].sum())}
            for n, f in frames.items()
        },
        "privacy": privacy,
    }
    return frames, summary


def run(settings: Settings) -> dict:
    """Entry point: source -> data/ingested/frame_<n>.parquet and reports/ingest.json."""
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.layout import Layout
    from pipeline.privacy import pseudonymisation_key
    from pipeline.sources import describe, read_source

    layout = Layout(settings.root)
    privacy = settings.environment.privacy
    # Before the source is read: a missing key must not cost a warehouse query.
    key = pseudonymisation_key(privacy) if privacy.pseudonymise_ids else None
    raw = read_source(settings)
    # A CSV's first data row is line 2 of the file: errors then point at the line.
    locate = row_locator(raw.attrs.get("first_line"))
    frames, summary = ingest(raw, settings, locate, key)
    summary["source"] = describe(settings.environment.data.source, settings)
    if "sha256" in raw.attrs:  # a query's result: what exactly was read
        summary["source_sha256"] = raw.attrs["sha256"]
    if layout.source_fingerprint.is_file():
        summary["source_fingerprint"] = read_json(layout.source_fingerprint)
    with atomic_dir(layout.ingested) as tmp:
        for number, part in frames.items():
            part.to_parquet(layout.frame_file(tmp, number), index=False)
        write_json(tmp / PRIVACY_RECORD, summary["privacy"])
    write_json(layout.ingest_report, summary)
    return summary
