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
