"""The data contract applied to data: what any source must deliver before anything is written.

Checks run in a fixed order (presence, type, range, allowed values) and stop at the
first broken rule with a `DataError` that names the column, the rule and an
offending value, with the place a person can find it: the file's line number for a
CSV (the header is line 1), the 1-based row otherwise.

Validation also normalises types, so every later stage sees one representation:
numbers as float64 (int64, or Int64 with gaps, for ints), booleans as float64 1/0
(the source's own tokens, such as Y/N, are read here), categories as Python strings,
datetimes as naive UTC `datetime64[ns]`, and the target as 0/1 with 1 the contract's
positive class.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from pipeline.config import FRAME, NUMERIC, ColumnSpec, Contract, Role
from pipeline.errors import DataError

# Where a row is, for a person: "line 12" of a CSV, or "row 11" of anything else.
Locate = Callable[[object], str]


def row_locator(first_line: int | None = None) -> Locate:
    """Line numbers of a file (first data line given), or 1-based row numbers."""
    if first_line is not None:
        return lambda index: f"line {int(index) + first_line}"  # type: ignore[call-overload]
    return lambda index: f"row {int(index) + 1}"  # type: ignore[call-overload]


def _fail(spec_name: str, rule: str, series: pd.Series, mask: pd.Series, locate: Locate):
    bad = series[mask]
    raise DataError(
        spec_name,
        rule,
        _plain(bad.iloc[0]),
        f"{int(mask.sum())} rows, first at {locate(bad.index[0])}",
    )


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _coerce_bool(spec: ColumnSpec, series: pd.Series, locate: Locate) -> pd.Series:
    tokens = {**{t: 1.0 for t in spec.true_tokens}, **{t: 0.0 for t in spec.false_tokens}}
    # Tokens compare as written; a CSV reader may hand 1 as the string "1", so both forms map.
    tokens.update({str(k): v for k, v in list(tokens.items()) if not isinstance(k, str)})
    mapped = series.map(lambda v: tokens.get(v, tokens.get(str(v))) if pd.notna(v) else np.nan)
    bad = mapped.isna() & series.notna()
    if bad.any():
        rule = f"bool tokens true {list(spec.true_tokens)} / false {list(spec.false_tokens)}"
        _fail(spec.name, rule, series, bad, locate)
    return mapped.astype("float64")


def _coerce_datetime(spec: ColumnSpec, series: pd.Series, locate: Locate) -> pd.Series:
    rule = f"datetime format {spec.format!r}" if spec.format else "datetime ISO-8601"
    if pd.api.types.is_datetime64_any_dtype(series):
        parsed = pd.to_datetime(series, utc=True)
    else:
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            _fail(spec.name, rule, series, series.notna(), locate)
        text = series.astype("string")
        parsed = pd.to_datetime(text, format=spec.format or "ISO8601", errors="coerce", utc=True)
        bad = parsed.isna() & series.notna()
        if bad.any():
            _fail(spec.name, rule, series, bad, locate)
    return parsed.dt.tz_convert(None).astype("datetime64[ns]")


def _coerce_number(spec: ColumnSpec, series: pd.Series, locate: Locate) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        _fail(spec.name, f"type {spec.dtype}", series, series.notna(), locate)
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna()
    if bad.any():
        _fail(spec.name, f"type {spec.dtype}", series, bad, locate)
    numeric = numeric.astype("float64")
    infinite = pd.Series(np.isinf(numeric), index=numeric.index)
    if infinite.any():
        _fail(spec.name, "finite number", numeric, infinite, locate)
    if spec.dtype == "int":
        fractional = numeric.notna() & (numeric != np.floor(numeric))
        if fractional.any():
            _fail(spec.name, "type int", numeric, fractional, locate)
        return numeric.astype("Int64") if numeric.isna().any() else numeric.astype("int64")
    return numeric


def _coerce(spec: ColumnSpec, series: pd.Series, locate: Locate) -> pd.Series:
    """Cast to the contract type, or raise naming the first value that cannot be cast."""
    if spec.dtype == "string":
        if pd.api.types.is_float_dtype(series) and series.notna().any():
            _fail(spec.name, "type string", series, series.notna(), locate)
        return series.astype("str").where(series.notna(), None).astype(object)
    if spec.dtype == "bool":
        return _coerce_bool(spec, series, locate)
    if spec.dtype == "datetime":
        return _coerce_datetime(spec, series, locate)
    return _coerce_number(spec, series, locate)


def _check_range(spec: ColumnSpec, series: pd.Series, locate: Locate) -> None:
    present = series.notna()
    if spec.min is not None:
        low = present & (series < spec.min)
        if low.any():
            _fail(spec.name, f"min {spec.min:g}", series, low, locate)
    if spec.max is not None:
        high = present & (series > spec.max)
        if high.any():
            _fail(spec.name, f"max {spec.max:g}", series, high, locate)
    if spec.allowed is not None:
        allowed = [str(a) for a in spec.allowed] if spec.dtype == "string" else spec.allowed
        outside = present & ~series.isin(allowed)
        if outside.any():
            _fail(spec.name, f"allowed {spec.allowed}", series, outside, locate)


def binary_target(spec: ColumnSpec, series: pd.Series, locate: Locate) -> pd.Series:
    """The target as 0/1, with 1 the positive class; a third value is a broken rule."""
    positive = positive_value(spec)
    present = series.notna()
    values = pd.unique(series[present])
    if spec.allowed is None and len(values) > 2:
        others = [v for v in values if v != positive]
        third = series.isin(others[1:]) & present
        rule = f"two classes (positive {spec.positive_class!r} and {_plain(others[0])!r})"
        _fail(spec.name, rule, series, third, locate)
    out = pd.Series(pd.NA, index=series.index, dtype="Int64")
    out[present] = (series[present] == positive).astype("int64")
    return out.astype("int64") if present.all() else out


def validate(frame: pd.DataFrame, contract: Contract, locate: Locate | None = None) -> pd.DataFrame:
    """Return the contract's columns, cast to their types; raise on the first broken rule.

    Columns the contract does not name are dropped here, so nothing unvetted (a stray
    identifier, say) travels further down the pipeline. Optional columns a source
    lacks stay absent. Nulls are allowed at this point: the missing-value policy is
    prepare's job.
    """
    if len(frame) == 0:
        raise DataError("(source)", "at least one row", 0, "the source is empty")
    result = validate_rows(frame, contract, locate)
    check_two_classes(result, contract.target)
    return result.reset_index(drop=True)


def validate_rows(
    frame: pd.DataFrame, contract: Contract, locate: Locate | None = None
) -> pd.DataFrame:
    """`validate` without the rules about the whole table (rows at all, two classes).

    Every rule here judges a row by itself, so a source read in chunks (ingest) is
    checked chunk by chunk; the result keeps `frame`'s index, which `locate` reads.
    """
    locate = locate or row_locator()
    missing = [s.name for s in contract.specs if s.required and s.name not in frame.columns]
    if missing:
        raise DataError(missing[0], "required column", "missing", f"missing columns: {missing}")
    if FRAME in frame.columns:
        raise DataError(FRAME, "reserved column name", FRAME, "ingest adds the time frame here")
    out = {}
    for spec in contract.specs:
        if spec.name not in frame.columns:
            continue
        series = _coerce(spec, frame[spec.name], locate)
        if spec.dtype in NUMERIC or spec.allowed is not None:
            _check_range(spec, series, locate)
        if spec.role == Role.TARGET:
            series = binary_target(spec, series, locate)
        out[spec.name] = series
    return pd.DataFrame(out, index=frame.index)


def target_values(contract: Contract, frame: pd.DataFrame, locate: Locate) -> pd.Series:
    """The target as the source gave it, cast to its type: what `binary_target` maps.

    Ingest keeps, across chunks, which values it has seen, because a third class can sit
    in another chunk than the first two.
    """
    spec = contract.target_spec
    return _coerce(spec, frame[spec.name], locate)


def positive_value(spec: ColumnSpec) -> object:
    """The positive class as it compares with the cast target (see `binary_target`)."""
    if spec.dtype == "string":
        return str(spec.positive_class)
    if spec.dtype == "bool":
        return 1.0 if spec.positive_class in spec.true_tokens else 0.0
    return spec.positive_class


def derive_record_ids(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """A stable id per record: a hash of its content, and its place among identical rows.

    The same file gives the same ids on every run (the hash has a fixed key and sees
    the validated, typed values), and two identical rows stay two records ("…-0",
    "…-1") unless prepare drops duplicates. The target is left out on purpose: a
    record's identity must not depend on the truth that arrives after it is scored.
    """
    content = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
    occurrence = pd.Series(content).groupby(content, sort=False).cumcount().to_numpy()
    return record_ids(content, occurrence, frame.index)


def record_ids(content: np.ndarray, occurrence: np.ndarray, index: pd.Index) -> pd.Series:
    """The id text of each row from its content hash and its place among equal rows.

    Ingest numbers equal rows across the chunks of a source (`ingest._Occurrences`), so
    one format serves both: the same file gives the same ids however it was read.
    """
    return pd.Series(
        [f"r{h:016x}-{n}" for h, n in zip(content.tolist(), occurrence.tolist(), strict=True)],
        index=index,
        dtype=object,
    )


def check_two_classes(frame: pd.DataFrame, target: str, where: str = "the source") -> None:
    classes = sorted(frame[target].dropna().unique().tolist())
    if len(classes) < 2:
        raise DataError(
            target, "at least two classes", classes, f"{where} has a single class, nothing to learn"
        )


def check_complete(frame: pd.DataFrame, contract: Contract) -> None:
    """The rules that hold after prepare: no nulls where not nullable, unique ids."""
    for spec in contract.specs:
        if spec.name not in frame.columns:
            continue
        if not spec.nullable and frame[spec.name].isna().any():
            count = int(frame[spec.name].isna().sum())
            raise DataError(spec.name, "not null", None, f"{count} rows are null")
    for name in {contract.id_column, *(s.name for s in contract.specs if s.unique)}:
        if name in frame.columns:
            dupes = frame[name].duplicated()
            if dupes.any():
                value = frame[name][dupes].iloc[0]
                raise DataError(name, "unique", value, f"{int(dupes.sum())} duplicate values")
