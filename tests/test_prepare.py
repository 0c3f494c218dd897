from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Prepare
from pipeline.contract import validate
from pipeline.errors import DataError
from pipeline.generator import generate
from pipeline.prepare import prepare


@pytest.fixture
def data(settings):
    return validate(
        generate(settings.generator.model_copy(update={"rows": 500}), 12), settings.contract
    )


def test_duplicates_are_dropped_and_counted(data, settings) -> None:
    doubled = __import__("pandas").concat([data, data.head(7)], ignore_index=True)
    out, report = prepare(doubled, settings.contract, Prepare(), settings.environment.privacy, None)
    assert len(out) == len(data)
    assert report["cleaning"]["duplicates_dropped"] == 7


@pytest.mark.parametrize("policy", ["drop", "fill_median", "fail"])
def test_missing_value_policy(data, settings, policy) -> None:
    data.loc[3, "V5"] = np.nan
    options = Prepare(missing=policy)
    if policy == "fail":
        with pytest.raises(DataError, match=r"'V5'.*not null"):
            prepare(data, settings.contract, options, settings.environment.privacy, None)
        return
    out, report = prepare(data, settings.contract, options, settings.environment.privacy, None)
    assert out["V5"].notna().all()
    assert len(out) == (len(data) - 1 if policy == "drop" else len(data))
    assert report["cleaning"]["rows_with_missing_handled"] == 1


def test_quasi_identifiers_leave_prepared_data_unless_a_slice_reads_them(data, settings) -> None:
    from pipeline.config.params import Slice
    from pipeline.prepare import needed_columns

    privacy = settings.environment.privacy
    needed = needed_columns(settings)
    assert not {"customer_age", "postcode"} & needed
    out, report = prepare(data, settings.contract, Prepare(), privacy, None, needed)
    assert not {"customer_age", "postcode"} & set(out.columns)
    assert set(settings.model_inputs) <= set(out.columns)
    assert report["dropped_quasi_identifiers"] == ["customer_age", "postcode"]
    assert report["dropped_columns"] == ["card_number"]
    report_options = settings.report.model_copy(update={"slices": [Slice(column="postcode")]})
    sliced = settings.model_copy(update={"report": report_options})
    assert "postcode" in needed_columns(sliced)
    out, _ = prepare(data, settings.contract, Prepare(), privacy, None, needed_columns(sliced))
    assert "postcode" in out.columns and "customer_age" not in out.columns
