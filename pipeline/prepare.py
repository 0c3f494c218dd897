"""Prepare (CRISP-DM: data preparation, algorithm-independent): clean, then apply privacy.

Runs over all frames at once because duplicates and id uniqueness are properties of
the whole data set, not of one frame. Direct identifiers and raw ids are already gone
(ingest minimises before its first write); prepare checks that they are, and protects
the quasi-identifiers once cleaning has settled which rows stay.

`run` holds one frame at a time (`prepare_by_frame`): repeats are marked per row by
ingest and the missing-value policy needs at most a median per column, so only the
columns whose rules span the whole data (the id, unique columns and the
quasi-identifiers) are gathered for all frames. At 10x the default data, holding
every frame at once took 3.3 GB. `prepare` is the same work on frames already in
memory.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import pandas as pd

from pipeline.config import Contract, Prepare, Privacy, Role, Settings
from pipeline.contract import check_complete
from pipeline.errors import ConfigError, DataError
from pipeline.ingest import FRAME, PRIVACY_RECORD, REPEATED, repeated_rows
from pipeline.privacy import protect_quasi_identifiers


def _required(frame: pd.DataFrame, contract: Contract) -> list[str]:
    return [s.name for s in contract.specs if not s.nullable and s.name in frame.columns]


def handle_missing(
    frame: pd.DataFrame, contract: Contract, policy: str, medians: dict | None = None
) -> tuple[pd.DataFrame, int]:
    """Apply the missing-value policy to columns the contract says may not be null.

    `medians` gives fill_median the medians of the whole data when `frame` is a part.
    """
    required = _required(frame, contract)
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
        median = filled[column].median() if medians is None else medians[column]
        filled[column] = filled[column].fillna(median)
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
    """`prepare_by_frame` on ingested frames already concatenated in memory (tests, a
    notebook); returns the prepared rows in frame order and the privacy report.

    `minimised` is what ingest's half of the filter did (its privacy record); `needed`
    names the columns later stages read: quasi-identifiers outside it are dropped by
    the privacy filter (see `needed_columns`). Rows without ingest's repeat marks get
    them here, from the whole table.
    """
    if REPEATED not in frame.columns:
        frame = frame.assign(**{REPEATED: repeated_rows(frame, contract)})
    if FRAME in frame.columns and len(frame):
        parts = [part.reset_index(drop=True) for _, part in frame.groupby(FRAME, sort=True)]
    else:
        parts = [frame.reset_index(drop=True)]
    prepared: dict[int, pd.DataFrame] = {}
    report = prepare_by_frame(
        lambda number, _columns=None: parts[number - 1],
        len(parts),
        prepared.__setitem__,
        contract,
        options,
        privacy,
        minimised,
        needed,
    )
    out = pd.concat([prepared[i] for i in sorted(prepared)], ignore_index=True)
    return out, report


def needed_columns(settings: Settings) -> set[str]:
    """The columns a stage after prepare reads from data/prepared.

    The model inputs (features, a time column a transform reads) and the report's
    slices. Verify, replay and continuous training read the model inputs (and the
    target); scoring reads the model inputs and the id, labelling the id and the target.
    A quasi-identifier is never a model input, so it survives prepare only when a
    report slice names it.
    """
    return {*settings.model_inputs, *(item.column for item in settings.report.slices)}


def _cleaned(frame: pd.DataFrame, options: Prepare) -> tuple[pd.DataFrame, int]:
    """One frame without the repeats ingest marked (when duplicates are dropped)."""
    repeated = frame[REPEATED].to_numpy(dtype=bool)
    frame = frame.drop(columns=[REPEATED])
    if not options.drop_duplicates:
        return frame, 0
    return frame[~repeated].reset_index(drop=True), int(repeated.sum())


def _medians(
    read: Callable[[int, list[str] | None], pd.DataFrame],
    count: int,
    contract: Contract,
    options: Prepare,
) -> dict | None:
    """What `handle_missing` needs from the whole data: the check of 'fail' on every frame,
    and the medians of 'fill_median'. One pass over the required columns; None for 'drop'.
    """
    if options.missing == "drop":
        return None
    nulls: dict[str, int] = {}
    columns: list[str] = []
    for number in range(1, count + 1):
        frame, _ = _cleaned(read(number, None), options)
        columns = columns or _required(frame, contract)
        for column, n in frame[columns].isna().sum().items():
            nulls[column] = nulls.get(column, 0) + int(n)
    gaps = [c for c in columns if nulls.get(c)]
    if not gaps:
        return {}
    if options.missing == "fail":
        raise DataError(
            gaps[0], "not null", None, f"{nulls[gaps[0]]} rows are null; prepare.missing is 'fail'"
        )
    numeric = {s.name for s in contract.specs if s.dtype in ("float", "int")}
    for column in gaps:
        if column not in numeric or column in (contract.target, contract.id_column):
            raise DataError(column, "not null", None, "fill_median only fills numeric features")
    parts = [_cleaned(read(n, None), options)[0][gaps] for n in range(1, count + 1)]
    whole = pd.concat(parts, ignore_index=True)
    return {column: whole[column].median() for column in gaps}


def prepare_by_frame(
    read: Callable[[int, list[str] | None], pd.DataFrame],
    count: int,
    write: Callable[[int, pd.DataFrame], None],
    contract: Contract,
    options: Prepare,
    privacy: Privacy,
    minimised: dict | None = None,
    needed: Collection[str] = (),
) -> dict:
    """`prepare` on ingested frames read one at a time: `read(n, columns)` gives frame n,
    `write(n, frame)` gets prepared frame n. Returns the privacy report, cleaning
    included.

    Each frame is cleaned twice (repeats, then the missing-value policy, both row by
    row) instead of being held: once to gather the id, unique columns and
    quasi-identifiers of every kept row, whose rules (unique values, k-anonymity,
    decile bands) span all frames, and once to write it with its quasi-identifiers
    protected as the whole data decided.
    """
    minimised = minimised or {}
    first = read(1, None)
    check_minimised(first, contract, privacy, minimised)
    del first
    medians = _medians(read, count, contract, options)
    policy = options.missing
    quasi = list(contract.names(Role.QUASI_IDENTIFIER))
    unique = {contract.id_column, *(s.name for s in contract.specs if s.unique)}
    rows_in = duplicates = missing = 0
    gathered, sizes = [], []
    for number in range(1, count + 1):
        frame = read(number, None)
        rows_in += len(frame)
        frame, dropped = _cleaned(frame, options)
        duplicates += dropped
        frame, handled = handle_missing(frame, contract, policy, medians)
        missing += handled
        # A copy: a selection of columns would keep the frame's blocks of other columns.
        gathered.append(frame[[c for c in frame.columns if c in unique or c in quasi]].copy())
        sizes.append(len(frame))
    whole = pd.concat(gathered, ignore_index=True)
    del gathered
    check_complete(whole, contract)
    protected, report = protect_quasi_identifiers(
        whole[[c for c in whole.columns if c in quasi]], contract, privacy, needed
    )
    del whole
    start = 0
    for number, size in zip(range(1, count + 1), sizes, strict=True):
        frame, _ = _cleaned(read(number, None), options)
        frame, _ = handle_missing(frame, contract, policy, medians)
        check_complete(frame, contract)
        for column in [c for c in quasi if c in frame.columns]:
            if column in protected.columns:
                values = protected[column].iloc[start : start + size]
                frame[column] = pd.Series(values.to_numpy(), index=frame.index, dtype=values.dtype)
            else:
                frame = frame.drop(columns=[column])
        write(number, frame)
        start += size
    report = {
        "dropped_columns": list(minimised.get("dropped_columns", [])),
        "pseudonymised_columns": list(minimised.get("pseudonymised_columns", [])),
        **report,
    }
    report["cleaning"] = {
        "rows_in": rows_in,
        "duplicates_dropped": duplicates,
        "rows_with_missing_handled": missing,
        "missing_policy": policy,
        "rows_out": report["rows"],
    }
    return report


def run(settings: Settings) -> dict:
    """Entry point: data/ingested -> data/prepared, plus reports/privacy.json."""
    import pyarrow.parquet as pq

    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    privacy = settings.environment.privacy
    record = layout.ingested / PRIVACY_RECORD
    minimised = read_json(record) if record.is_file() else {}
    count = settings.frames.count
    needed = needed_columns(settings)

    def read(number: int, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(layout.frame_file(layout.ingested, number), columns=columns)

    with atomic_dir(layout.prepared) as tmp:

        def write(number: int, part: pd.DataFrame) -> None:
            part.to_parquet(layout.frame_file(tmp, number), index=False)

        if REPEATED not in pq.read_schema(layout.frame_file(layout.ingested, 1)).names:
            raise ConfigError(
                f"data/ingested lacks the {REPEATED} column that ingest writes since it "
                "marks repeated rows: run `dvc repro ingest` (or `crispml ingest`) again"
            )
        report = prepare_by_frame(
            read, count, write, settings.contract, settings.prepare, privacy, minimised, needed
        )
    write_json(layout.privacy_report, report)
    return report
