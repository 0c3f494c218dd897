"""Ingest (CRISP-DM: data understanding): source -> validated, framed, sampled Parquet.

The contract is checked before anything is written, so a bad source leaves the
previous outputs untouched. Records without a declared id get one derived from their
content here, on the whole source, so ids do not depend on sampling. Sampling is
stratified on (frame, target) because a plain random sample of a 0.17 % class can
lose every positive of a frame.

The first half of the environment's privacy filter (`pipeline.privacy.minimise`) runs
here, before the first write: `data/ingested/`, and with it the DVC cache and remote,
never holds a direct identifier or, where the environment keys them, a raw id.

The source is read in chunks (`ingest_in_chunks`): every rule that judges a row alone
runs chunk by chunk, the validated chunks wait on disk, and what needs the whole table
(frames, the sample, repeated rows, the two classes) is decided from a few narrow
columns of all rows. At 10x the default data, holding the whole table took 3.5 GB.
`ingest` is the same work on a table already in memory, as one chunk.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import FRAME, Contract, Frames, Role, Settings
from pipeline.contract import (
    Locate,
    _plain,
    check_two_classes,
    positive_value,
    record_ids,
    row_locator,
    target_values,
    validate_rows,
)
from pipeline.errors import ConfigError, DataError
from pipeline.privacy import minimise

__all__ = [
    "FRAME",
    "REPEATED",
    "assign_frames",
    "ingest",
    "ingest_in_chunks",
    "run",
    "stratified_sample",
]

# Rows of the source read, validated and spilled at a time by `run`. A chunk of the
# default data's width takes about 2 KB a row while it is validated (raw, typed and
# hashed), so 100,000 rows keep a chunk near 200 MB beside what the source holds (the
# generator keeps its drawn numbers, 0.8 GB at 10x the default rows).
CHUNK_ROWS = 100_000

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
    """`ingest_in_chunks` on a table already in memory, read as one chunk: one DataFrame
    per frame and the summary. For callers that hold the table (tests, a notebook); the
    stage reads its source in chunks. `key` is the pseudonymisation key when the
    environment keys ids."""
    frames: dict[int, pd.DataFrame] = {}
    summary = ingest_in_chunks([raw], settings, frames.__setitem__, locate, key)
    return frames, summary


def content_hashes(data: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's values in `columns`, the same in any chunk.

    Numbers are hashed as float64 with -0.0 made 0.0, so values that `duplicated`
    holds equal (an int64 and an Int64 5, 0.0 and -0.0) hash equal in any chunk; equal
    hashes are only candidates, which `_exact_repeats` checks value by value.
    """
    canonical = {}
    for column in columns:
        values = data[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            values = values.astype("float64") + 0.0
        canonical[column] = values
    if not canonical:
        return np.zeros(len(data), dtype="uint64")
    return pd.util.hash_pandas_object(
        pd.DataFrame(canonical, index=data.index), index=False
    ).to_numpy()


class _Occurrences:
    """How often each content hash has been seen, so derived ids number identical rows
    across chunks as `derive_record_ids` numbers them in one table."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype="uint64")
        self.counts = np.empty(0, dtype="int64")

    def ids(self, data: pd.DataFrame, columns: list[str]) -> pd.Series:
        content = pd.util.hash_pandas_object(data[columns], index=False).to_numpy()
        unique, inverse, counts = np.unique(content, return_inverse=True, return_counts=True)
        before = np.zeros(len(unique), dtype="int64")
        if len(self.hashes):
            where = np.minimum(np.searchsorted(self.hashes, unique), len(self.hashes) - 1)
            known = self.hashes[where] == unique
            before[known] = self.counts[where[known]]
        within = pd.Series(content).groupby(content, sort=False).cumcount().to_numpy()
        occurrence = before[inverse.ravel()] + within
        merged = np.concatenate([self.hashes, unique])
        totals = np.concatenate([self.counts, counts])
        self.hashes, position = np.unique(merged, return_inverse=True)
        self.counts = np.bincount(position.ravel(), weights=totals).astype("int64")
        return record_ids(content, occurrence, data.index)


class _TargetClasses:
    """The target's values across chunks: a third class may sit in another chunk than
    the first two, where `binary_target` on that chunk alone cannot see it."""

    def __init__(self, contract: Contract) -> None:
        self.spec = contract.target_spec
        self.first: dict[object, int] = {}
        self.count: dict[object, int] = {}

    def add(self, raw: pd.DataFrame, contract: Contract, locate: Locate) -> None:
        if self.spec.allowed is not None:
            return
        values = target_values(contract, raw, locate)
        present = values[values.notna()]
        counts = present.value_counts(sort=False)
        firsts = present.index.to_series().groupby(present.to_numpy(), sort=False).first()
        for value, first in firsts.items():
            self.first.setdefault(value, int(first))
            self.count[value] = self.count.get(value, 0) + int(counts[value])

    def check(self, locate: Locate) -> None:
        """Raise as `binary_target` would on the whole table, with its count and place."""
        if len(self.first) <= 2:
            return
        ordered = sorted(self.first, key=self.first.__getitem__)
        positive = positive_value(self.spec)
        others = [v for v in ordered if v != positive]
        third = others[1:]
        rule = f"two classes (positive {self.spec.positive_class!r} and {_plain(others[0])!r})"
        first = min(third, key=self.first.__getitem__)
        count = sum(self.count[v] for v in third)
        where = locate(self.first[first])
        raise DataError(self.spec.name, rule, _plain(first), f"{count} rows, first at {where}")


def _in_chunk(error: DataError, start: int, rows: int, locate: Locate) -> DataError:
    """The error of a chunk after the first, saying its count covers that chunk only."""
    head = str(DataError(error.field, error.rule, error.value))
    detail = str(error)[len(head) + 2 : -1] if str(error).startswith(head + " (") else ""
    where = f"{locate(start)} to {locate(start + rows - 1)}"
    return DataError(
        error.field,
        error.rule,
        error.value,
        f"{detail}; counted from {where}, the part of the source checked first"
        if detail
        else f"counted from {where}",
    )


def _spill(
    chunks: Iterable[pd.DataFrame],
    contract: Contract,
    locate: Locate,
    folder: Path,
) -> dict:
    """Validate chunk by chunk, spill each typed chunk, keep the narrow whole-table columns.

    Returns the spilled files and row counts, the time and target columns of every row,
    every row's content hash (see `repeated_rows`), the integer columns that had a gap
    somewhere (they are Int64 everywhere, as in one table) and whether ids are derived.
    """
    spilled: dict = {"files": [], "sizes": [], "times": [], "targets": [], "hashes": []}
    spilled.update(nullable=set(), derived=None)
    occurrences, classes = _Occurrences(), _TargetClasses(contract)
    identifying = {
        *contract.names(Role.DIRECT_IDENTIFIER),
        *contract.names(Role.QUASI_IDENTIFIER),
    }
    start = 0
    for raw in chunks:
        if len(raw) == 0:
            continue
        raw = raw.set_axis(pd.RangeIndex(start, start + len(raw)))
        try:
            data = validate_rows(raw, contract, locate)
            classes.add(raw, contract, locate)
        except DataError as exc:
            raise (_in_chunk(exc, start, len(raw), locate) if start else exc) from None
        del raw
        data = data.reset_index(drop=True)
        if spilled["derived"] is None:
            spilled["derived"] = contract.id_column not in data.columns
        if spilled["derived"]:
            content = [c for c in data.columns if c not in (contract.target, *identifying)]
            data[contract.id_column] = occurrences.ids(data, content)
        spilled["nullable"].update(c for c in data.columns if data[c].dtype == "Int64")
        # Copies: a column of a frame is a view that would keep the chunk's whole block.
        if contract.time_column is not None:
            spilled["times"].append(data[contract.time_column].copy())
        spilled["targets"].append(data[contract.target].copy())
        content = [c for c in data.columns if c != contract.id_column]
        spilled["hashes"].append(content_hashes(data, content))
        path = folder / f"chunk_{len(spilled['files']):05d}.pickle"
        data.to_pickle(path)
        spilled["files"].append(path)
        spilled["sizes"].append(len(data))
        start += len(data)
    if start == 0:
        raise DataError("(source)", "at least one row", 0, "the source is empty")
    classes.check(locate)
    return spilled


def _read_spilled(path: Path, nullable: set[str]) -> pd.DataFrame:
    """A spilled chunk with the types the whole table would have (Int64 where any gap)."""
    data = pd.read_pickle(path)
    widen = {c: "Int64" for c in nullable if c in data.columns and data[c].dtype != "Int64"}
    return data.astype(widen) if widen else data


def _rows(spilled: dict, positions: np.ndarray) -> pd.DataFrame:
    """The spilled rows at these source positions (ascending), as one frame."""
    parts, start = [], 0
    for path, size in zip(spilled["files"], spilled["sizes"], strict=True):
        inside = positions[(positions >= start) & (positions < start + size)]
        if len(inside):
            parts.append(_read_spilled(path, spilled["nullable"]).iloc[inside - start])
        start += size
    return pd.concat(parts, ignore_index=True)


def _exact_repeats(
    spilled: dict, kept: np.ndarray, frames: np.ndarray, contract: Contract
) -> np.ndarray:
    """REPEATED of every kept row: `repeated_rows` on the whole table, from its hashes.

    A row whose hash no other kept row shares is not repeated. The rows that share one
    (true repeats, and any collision) are read back and judged by `repeated_rows` on
    their values: an earlier equal row of one of them shares its hash, so it is there.
    """
    hashes = np.concatenate(spilled["hashes"])[kept]
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse.ravel()] > 1)
    repeated = np.zeros(len(kept), dtype=bool)
    if len(shared):
        candidates = _rows(spilled, kept[shared]).assign(**{FRAME: frames[shared]})
        repeated[shared] = repeated_rows(candidates, contract).to_numpy(dtype=bool)
    return repeated


def ingest_in_chunks(
    chunks: Iterable[pd.DataFrame],
    settings: Settings,
    write: Callable[[int, pd.DataFrame], None],
    locate: Locate | None = None,
    key: bytes | None = None,
    spill_dir: Path | None = None,
) -> dict:
    """`ingest` on a source read in chunks: `write(n, frame)` gets each frame as `ingest`
    returns it, and the summary is `ingest`'s. Chunks are indexed by row position or
    from 0; the validated rows wait in `spill_dir` (a temporary folder by default).

    Frames are written one at a time from the spilled chunks that hold their rows. A
    source in time order (the generator, most logs) puts a frame in one or two chunks;
    one in no order has every chunk read once per frame: slower, never larger.
    """
    contract = settings.contract
    if REPEATED in contract.by_name:
        raise ConfigError(f"contract column name {REPEATED!r} is reserved for ingest")
    locate = locate or row_locator()
    with tempfile.TemporaryDirectory(prefix=".ingest-", dir=spill_dir) as folder:
        spilled = _spill(chunks, contract, locate, Path(folder))
        targets = pd.concat(spilled.pop("targets"), ignore_index=True)
        check_two_classes(targets.to_frame(), contract.target)
        rows = len(targets)
        time_column = contract.time_column
        if time_column is None:
            timeline = pd.DataFrame(index=pd.RangeIndex(rows))
        else:
            timeline = pd.concat(spilled.pop("times"), ignore_index=True).to_frame()
        frames = assign_frames(timeline, time_column, settings.frames).to_numpy(dtype="int64")
        del timeline
        env_data = settings.environment.data
        keys = pd.DataFrame({FRAME: frames, contract.target: targets})
        kept = stratified_sample(
            keys,
            [FRAME, contract.target],
            env_data.sample_fraction,
            env_data.sample_seed,
            contract.target,
        ).index.to_numpy()
        del keys, targets
        repeated = np.zeros(rows, dtype=bool)
        repeated[kept] = _exact_repeats(spilled, kept, frames[kept], contract)
        chosen = np.zeros(rows, dtype=bool)
        chosen[kept] = True
        summary_frames, privacy, total, positives = {}, {}, 0, 0
        cached: tuple[int, pd.DataFrame] | None = None
        for number in range(1, settings.frames.count + 1):
            parts, start = [], 0
            for i, (path, size) in enumerate(zip(spilled["files"], spilled["sizes"], strict=True)):
                inside = chosen[start : start + size] & (frames[start : start + size] == number)
                if inside.any():
                    if cached is None or cached[0] != i:
                        cached = (i, _read_spilled(path, spilled["nullable"]))
                    part = cached[1][inside].assign(
                        **{FRAME: number, REPEATED: repeated[start : start + size][inside]}
                    )
                    parts.append(part)
                start += size
            if not parts:
                empty = _read_spilled(spilled["files"][0], spilled["nullable"]).iloc[:0]
                parts = [empty.assign(**{FRAME: np.int64(0), REPEATED: False}).iloc[:0]]
            part = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
            part = part.reset_index(drop=True).astype({FRAME: "int64", REPEATED: "bool"})
            part, privacy = minimise(part, contract, settings.environment.privacy, key)
            write(number, part)
            summary_frames[str(number)] = {
                "rows": len(part),
                "positives": int(part[contract.target].sum()),
            }
            total += len(part)
            positives += int(part[contract.target].sum())
            del parts, part
    return {
        "source_rows": rows,
        "rows": total,
        "sample_fraction": env_data.sample_fraction,
        "positives": positives,
        "positive_class": contract.target_spec.positive_class,
        "ids": "derived from content" if spilled["derived"] else f"column {contract.id_column}",
        "frames_by": "row order" if time_column is None else settings.frames.by,
        "frames": summary_frames,
        "privacy": privacy,
    }


def run(settings: Settings) -> dict:
    """Entry point: source -> data/ingested/frame_<n>.parquet and reports/ingest.json."""
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.layout import Layout
    from pipeline.privacy import pseudonymisation_key
    from pipeline.sources import describe, read_source_chunks

    layout = Layout(settings.root)
    privacy = settings.environment.privacy
    # Before the source is read: a missing key must not cost a warehouse query.
    key = pseudonymisation_key(privacy) if privacy.pseudonymise_ids else None
    chunks = read_source_chunks(settings, CHUNK_ROWS)
    first = next(chunks, None)
    attrs = {} if first is None else dict(first.attrs)
    # A CSV's first data row is line 2 of the file: errors then point at the line.
    locate = row_locator(attrs.get("first_line"))
    # The first chunk is handed on, not kept: nothing here may hold a chunk once read.
    source = itertools.chain([first] if first is not None else [], chunks)
    del first

    with atomic_dir(layout.ingested) as tmp:

        def write(number: int, part: pd.DataFrame) -> None:
            part.to_parquet(layout.frame_file(tmp, number), index=False)

        summary = ingest_in_chunks(source, settings, write, locate, key, layout.ingested.parent)
        summary["source"] = describe(settings.environment.data.source, settings)
        if "sha256" in attrs:  # a query's result: what exactly was read
            summary["source_sha256"] = attrs["sha256"]
        if layout.source_fingerprint.is_file():
            summary["source_fingerprint"] = read_json(layout.source_fingerprint)
        write_json(tmp / PRIVACY_RECORD, summary["privacy"])
    write_json(layout.ingest_report, summary)
    return summary
