"""The data contract: what any source must deliver before anything is written.

Checks run in a fixed order (presence, type, range, allowed values) and stop at the
first broken rule with a `DataError` that names the column, the rule and an
offending value, so a person can find the bad row without reading a traceback.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import ColumnSpec, Contract, Role
from pipeline.errors import DataError


def _first_bad(series: pd.Series, mask: pd.Series) -> tuple[object, int, object]:
    """The first offending value, how many rows offend, and where the first one is."""
    bad = series[mask]
    return bad.iloc[0], int(mask.sum()), bad.index[0]


def _coerce(spec: ColumnSpec, series: pd.Series) -> pd.Series:
    """Cast to the contract type, or raise naming the first value that cannot be cast."""
    if spec.dtype == "string":
        if pd.api.types.is_float_dtype(series):
            bad = series.notna()
            if bad.any():
                value, count, where = _first_bad(series, bad)
                raise DataError(
                    spec.name, "type string", value, f"{count} rows, first at row {where}"
                )
        return series.astype("str").where(series.notna(), None).astype(object)
    if spec.dtype == "bool":
        if pd.api.types.is_bool_dtype(series):
            return series
        # 1 and 0 hash like True and False, so they map too.
        mapped = series.map({True: True, False: False, "true": True, "false": False})
        bad = mapped.isna() & series.notna()
        if bad.any():
            value, count, where = _first_bad(series, bad)
            raise DataError(spec.name, "type bool", value, f"{count} rows, first at row {where}")
        return mapped
    # numeric
    if pd.api.types.is_bool_dtype(series):
        value, count, where = _first_bad(series, series.notna())
        raise DataError(
            spec.name, f"type {spec.dtype}", value, f"{count} rows, first at row {where}"
        )
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna()
    if bad.any():
        value, count, where = _first_bad(series, bad)
        raise DataError(
            spec.name, f"type {spec.dtype}", value, f"{count} rows, first at row {where}"
        )
    numeric = numeric.astype("float64")
    infinite = np.isinf(numeric)
    if infinite.any():
        value, count, where = _first_bad(numeric, infinite)
        raise DataError(spec.name, "finite number", value, f"{count} rows, first at row {where}")
    if spec.dtype == "int":
        fractional = numeric.notna() & (numeric != np.floor(numeric))
        if fractional.any():
            value, count, where = _first_bad(numeric, fractional)
            raise DataError(spec.name, "type int", value, f"{count} rows, first at row {where}")
        return numeric.astype("Int64") if numeric.isna().any() else numeric.astype("int64")
    return numeric


def _check_range(spec: ColumnSpec, series: pd.Series) -> None:
    present = series.notna()
    if spec.min is not None:
        low = present & (series < spec.min)
        if low.any():
            value, count, where = _first_bad(series, low)
            raise DataError(
                spec.name, f"min {spec.min:g}", value, f"{count} rows, first at row {where}"
            )
    if spec.max is not None:
        high = present & (series > spec.max)
        if high.any():
            value, count, where = _first_bad(series, high)
            raise DataError(
                spec.name, f"max {spec.max:g}", value, f"{count} rows, first at row {where}"
            )
    if spec.allowed is not None:
        outside = present & ~series.isin(spec.allowed)
        if outside.any():
            value, count, where = _first_bad(series, outside)
            raise DataError(
                spec.name, f"allowed {spec.allowed}", value, f"{count} rows, first at row {where}"
            )


def validate(frame: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Return the contract's columns, cast to their types; raise on the first broken rule.

    Columns the contract does not name are dropped here, so nothing unvetted (a stray
    identifier, say) travels further down the pipeline.
    Nulls are allowed at this point: the missing-value policy is prepare's job.
    """
    if len(frame) == 0:
        raise DataError("(source)", "at least one row", 0, "the source is empty")
    missing = [s.name for s in contract.specs if s.name not in frame.columns]
    if missing:
        raise DataError(missing[0], "required column", "missing", f"missing columns: {missing}")
    out = {}
    for spec in contract.specs:
        series = _coerce(spec, frame[spec.name])
        if spec.dtype in ("float", "int") or spec.allowed is not None:
            _check_range(spec, series)
        out[spec.name] = series
    result = pd.DataFrame(out, index=frame.index)
    check_two_classes(result, contract.target)
    return result.reset_index(drop=True)


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
        if spec.unique or spec.role == Role.ID:
            dupes = frame[spec.name].duplicated()
            if dupes.any():
                value, count, _ = _first_bad(frame[spec.name], dupes)
                raise DataError(spec.name, "unique", value, f"{count} duplicate values")
