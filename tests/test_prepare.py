from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Prepare
from pipeline.contract import validate
from pipeline.errors import DataError
from pipeline.generator import generate
from pipeline.prepare import prepare
from pipeline.privacy import minimise

DROPPED = {"dropped_columns": ["card_number"], "pseudonymised_columns": []}


@pytest.fixture
def data(settings):
    """Validated data as ingest writes it: already without the direct identifier."""
    raw = validate(
        generate(settings.generator.model_copy(update={"rows": 500}), 12), settings.contract
    )
    minimised, done = minimise(raw, settings.contract, settings.environment.privacy, None)
    assert done == DROPPED
    return minimised


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
    out, report = prepare(data, settings.contract, Prepare(), privacy, DROPPED, needed)
    assert not {"customer_age", "postcode"} & set(out.columns)
    assert set(settings.model_inputs) <= set(out.columns)
    assert report["dropped_quasi_identifiers"] == ["customer_age", "postcode"]
    assert report["dropped_columns"] == ["card_number"]
    report_options = settings.report.model_copy(update={"slices": [Slice(column="postcode")]})
    sliced = settings.model_copy(update={"report": report_options})
    assert "postcode" in needed_columns(sliced)
    out, _ = prepare(data, settings.contract, Prepare(), privacy, None, needed_columns(sliced))
    assert "postcode" in out.columns and "customer_age" not in out.columns


def test_data_the_filter_did_not_minimise_is_refused(settings) -> None:
    """`crispml prepare` by hand on older ingested data must not pass raw values on."""
    from pipeline.errors import ConfigError

    raw = validate(
        generate(settings.generator.model_copy(update={"rows": 300}), 12), settings.contract
    )
    privacy = settings.environment.privacy
    with pytest.raises(ConfigError, match=r"direct identifiers \['card_number'\]"):
        prepare(raw, settings.contract, Prepare(), privacy, {})
    keyed = privacy.model_copy(update={"pseudonymise_ids": True})
    data = raw.drop(columns=["card_number"])
    with pytest.raises(ConfigError, match="pseudonymise_ids is on"):
        prepare(data, settings.contract, Prepare(), keyed, DROPPED)
    with pytest.raises(ConfigError, match="pseudonymise_ids is off"):
        prepare(data, settings.contract, Prepare(), privacy, {"pseudonymised_columns": ["x"]})


# --- `run` prepares one frame at a time; how rows fall into frames changes nothing ------


def _ingested(settings, rows: int = 900):
    """Ingested frames with repeats across frames, gaps and a rare quasi-identifier class."""
    import pandas as pd

    from pipeline.ingest import ingest

    raw = generate(settings.generator.model_copy(update={"rows": rows}), 12)
    again = raw.iloc[[5, 7, rows - 3]].assign(transaction_id=["tx-a", "tx-b", "tx-c"])
    raw = pd.concat([raw, again], ignore_index=True)
    raw.loc[[40, rows // 2], "V3"] = np.nan
    raw.loc[rows - 10, "postcode"] = "00000"  # a class of one: suppressed across frames
    frames, summary = ingest(raw, settings)
    return frames, summary["privacy"]


@pytest.mark.parametrize("policy", ["drop", "fill_median", "fail"])
@pytest.mark.parametrize("rules", [True, False])
def test_twelve_frames_give_what_the_same_rows_in_one_frame_give(settings, policy, rules) -> None:
    """Duplicates, medians, unique ids and k-anonymity span frames: reading the rows one
    frame at a time must decide them as if every row were in one frame."""
    import pandas as pd

    from pipeline.prepare import needed_columns, prepare_by_frame

    frames, minimised = _ingested(settings)
    privacy = settings.environment.privacy
    if not rules:  # no generalisation rules: decile bands cut on all frames at once
        privacy = privacy.model_copy(update={"generalise": {}})
    options = Prepare(missing=policy)
    needed = needed_columns(settings) | {"postcode"}

    def prepared(parts: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
        written: dict[int, pd.DataFrame] = {}
        report = prepare_by_frame(
            lambda n, columns=None: parts[n],
            len(parts),
            written.__setitem__,
            settings.contract,
            options,
            privacy,
            minimised,
            needed,
        )
        assert sorted(written) == sorted(parts)
        return pd.concat([written[n] for n in sorted(written)], ignore_index=True), report

    one = {1: pd.concat([frames[n] for n in range(1, 13)], ignore_index=True)}
    if policy == "fail":
        with pytest.raises(DataError) as expected:
            prepared(one)
        with pytest.raises(DataError) as got:
            prepared(frames)
        assert str(got.value) == str(expected.value)
        return
    whole, report = prepared(one)
    by_frame, by_frame_report = prepared(frames)
    assert by_frame_report == report
    assert report["cleaning"]["duplicates_dropped"] == 3
    assert report["suppressed_rows"] > 0
    pd.testing.assert_frame_equal(by_frame, whole, check_exact=True)
    # `prepare`, for a table in memory, is the same work.
    in_memory, in_memory_report = prepare(
        one[1], settings.contract, options, privacy, minimised, needed
    )
    assert in_memory_report == report
    pd.testing.assert_frame_equal(in_memory, whole, check_exact=True)
