"""Bad input at the contract: each case names the column and the rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.contract import check_complete, validate
from pipeline.errors import DataError
from pipeline.generator import generate


@pytest.fixture
def raw(settings) -> pd.DataFrame:
    return generate(settings.generator.model_copy(update={"rows": 400}), settings.frames.count)


def test_valid_data_passes_and_is_typed(raw, settings) -> None:
    out = validate(raw, settings.contract)
    assert list(out.columns) == [s.name for s in settings.contract.specs]
    assert out["Class"].dtype == "int64"
    assert out["V1"].dtype == "float64"


def test_extra_columns_are_dropped(raw, settings) -> None:
    out = validate(raw.assign(stray_email="a@b.c"), settings.contract)
    assert "stray_email" not in out.columns


@pytest.mark.parametrize(
    ("mutate", "column", "rule"),
    [
        (lambda d: d.drop(columns=["V3"]), "V3", "required column"),
        (
            lambda d: d.assign(Amount=d["Amount"].astype(object).where(d.index != 5, "12,50")),
            "Amount",
            "type float",
        ),
        (lambda d: d.assign(V7=d["V7"].where(d.index != 9, 250.5)), "V7", "max 250"),
        (lambda d: d.assign(Amount=d["Amount"].where(d.index != 3, -1.0)), "Amount", "min 0"),
        (lambda d: d.assign(Class=d["Class"].where(d.index != 2, 3)), "Class", "allowed"),
        (
            lambda d: d.assign(
                customer_age=d["customer_age"].astype(float).where(d.index != 1, 30.5)
            ),
            "customer_age",
            "type int",
        ),
        (lambda d: d.assign(V1=d["V1"].where(d.index != 4, np.inf)), "V1", "finite number"),
        (lambda d: d.iloc[0:0], "(source)", "at least one row"),
        (lambda d: d.assign(Class=0), "Class", "at least two classes"),
    ],
    ids=[
        "missing",
        "wrong-type",
        "above-max",
        "below-min",
        "not-allowed",
        "not-int",
        "infinite",
        "empty",
        "single-class",
    ],
)
def test_bad_input_names_column_and_rule(raw, settings, mutate, column, rule) -> None:
    with pytest.raises(DataError) as caught:
        validate(mutate(raw), settings.contract)
    assert caught.value.field == column
    assert rule in caught.value.rule
    assert column in str(caught.value) and rule in str(caught.value)


def test_duplicate_ids_are_refused_after_prepare(raw, settings) -> None:
    data = validate(raw, settings.contract)
    data.loc[1, "transaction_id"] = data.loc[0, "transaction_id"]
    with pytest.raises(DataError, match=r"transaction_id.*unique"):
        check_complete(data, settings.contract)
