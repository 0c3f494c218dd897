"""Prepare (CRISP-DM: data preparation, algorithm-independent): clean, then apply privacy.

Runs over all frames at once because duplicates and id uniqueness are properties of
the whole data set, not of one frame. Direct identifiers and raw ids are already gone
(ingest minimises before its first write); prepare checks that they are, and protects
the quasi-identifiers once cleaning has settled which rows stay.
"""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

from pipeline.config import Contract, Prepare, Privacy, Role, Settings
from pipeline.contract import check_complete
from pipeline.errors import ConfigError, DataError
from pipeline.ingest import FRAME, PRIVACY_RECORD, REPEATED, repeated_rows
from pipeline.privacy import protect_quasi_identifiers


def handle_missing(
    frame: pd.DataFrame, contract: Contract, policy: str
) -> tuple[pd.DataFrame, int]:
    """Apply the missing-value policy to columns the contract says may not be null."""
    required = [s.name for s in contract.specs if not s.nullable and s.name in frame.columns]
    nulls = frame[required].isna()
    if not nulls.any().any():
        return frame, 0
    first = nulls.any().idxmax()
    count = int(nulls[first].sum())
    if policy == "fail":
        raise DataError(
            first, "not null", None, f"{count} rows are null; prepare.missing is 'fail'"
        )
    if policy == "drop":
        keep = ~nulls.any(axis=1)
        return frame[keep].reset_index(drop=True), int((~keep).sum())
    filled = frame.copy()
    numeric = {s.name for s in contract.specs if s.dtype in ("float", "int")}
    for column in required:
        if not nulls[column].any():
            continue
        if column not in numeric or column in (contract.target, contract.id_column):
            raise DataError(column, "not null", None, "fill_median only fills numeric features")
        filled[column] = filled[column].fillna(filled[column].median())
    return filled, int(nulls.any(axis=1).sum())


def check_minimised(
    frame: pd.DataFrame, contract: Contract, privacy: Privacy, minimised: dict
) -> None:
    """Refuse ingested data that was not minimised the way the environment now says.

    DVC re-runs ingest when the filter changes, but `crispml prepare` run by hand on
    older ingested data would otherwise pass raw identifiers or raw ids on, or key
    nothing while label keys the ground truth's ids.
    """
    again = "run `crispml ingest` (or `dvc repro`) again"
    direct = [c for c in contract.names(Role.DIRECT_IDENTIFIER) if c in frame.columns]
    if privacy.drop_direct_identifiers and direct:
        raise ConfigError(
            f"data/ingested holds direct identifiers {direct} although "
            f"privacy.drop_direct_identifiers is on: {again}"
        )
    keyed = list(minimised.get("pseudonymised_columns", []))
    wanted = [contract.id_column] if privacy.pseudonymise_ids else []
    if keyed != wanted:
        state = "on" if privacy.pseudonymise_ids else "off"
        raise ConfigError(
            f"data/ingested has pseudonymised columns {keyed} but privacy.pseudonymise_ids "
            f"is {state}: {again}"
        )


def prepare(
    frame: pd.DataFrame,
    contract: Contract,
    options: Prepare,
    privacy: Privacy,
    minimised: dict | None = None,
    needed: Collection[str] = (),
) -> tuple[pd.DataFrame, dict]:
    """Clean and filter the concatenated frames; returns the data and the privacy report.

    `minimised` is what ingest's half of the filter did (its privacy record); `needed`
    names the columns later stages read: quasi-identifiers outside it are dropped by
    the privacy filter (see `needed_columns`).
    """
    minimised = minimised or {}
    check_minimised(frame, contract, privacy, minimised)
    rows_in = len(frame)
    # Ingest marked the repeats while it still saw the direct identifiers.
    repeated = frame[REPEATED] if REPEATED in frame.columns else repeated_rows(frame, contract)
    frame = frame.drop(columns=[REPEATED], errors="ignore")
    duplicates = 0
    if options.drop_duplicates:
        # A duplicate is the same content twice. The id is left out (a derived id
        # already tells identical rows apart, and a re-sent row gets a new source id),
        # and so is the frame, which is a function of the row's place, not its content.
        frame = frame[~repeated.to_numpy(dtype=bool)].reset_index(drop=True)
        duplicates = rows_in - len(frame)
    frame, missing = handle_missing(frame, contract, options.missing)
    check_complete(frame, contract)
    filtered, report = protect_quasi_identifiers(frame, contract, privacy, needed)
    report = {
        "dropped_columns": list(minimised.get("dropped_columns", [])),
        "pseudonymised_columns": list(minimised.get("pseudonymised_columns", [])),
        **report,
    }
    report["cleaning"] = {
        "rows_in": rows_in,
        "duplicates_dropped": duplicates,
        "rows_with_missing_handled": missing,
        "missing_policy": options.missing,
        "rows_out": len(filtered),
    }
    return filtered, report


def needed_columns(settings: Settings) -> set[str]:
    """The columns a stage after prepare reads from data/prepared.

    The model inputs (features, a time column a transform reads) and the report's
    slices. Verify, replay and continuous training read the model inputs (and the
    target); scoring reads the model inputs and the id, labelling the id and the target.
    A quasi-identifier is never a model input, so it survives prepare only when a
    report slice names it.
    """
    return {*settings.model_inputs, *(item.column for item in settings.report.slices)}


def split_frames(frame: pd.DataFrame, count: int) -> dict[int, pd.DataFrame]:
    return {n: frame[frame[FRAME] == n].reset_index(drop=True) for n in range(1, count + 1)}


def run(settings: Settings) -> dict:
    """Entry point: data/ingested -> data/prepared, plus reports/privacy.json."""
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    privacy = settings.environment.privacy
    record = layout.ingested / PRIVACY_RECORD
    minimised = read_json(record) if record.is_file() else {}
    count = settings.frames.count
    data = pd.concat(
        [pd.read_parquet(layout.frame_file(layout.ingested, n)) for n in range(1, count + 1)],
        ignore_index=True,
    )
    prepared, report = prepare(
        data, settings.contract, settings.prepare, privacy, minimised, needed_columns(settings)
    )
    with atomic_dir(layout.prepared) as tmp:
        for number, part in split_frames(prepared, count).items():
            part.to_parquet(layout.frame_file(tmp, number), index=False)
    write_json(layout.privacy_report, report)
    return report
