from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import Frames
from pipeline.errors import DataError
from pipeline.generator import generate
from pipeline.ingest import assign_frames, ingest, stratified_sample


def _frames(by: str = "width", count: int = 12, period: str | None = None) -> Frames:
    return Frames(count=count, by=by, period=period, train=[1], score=[count])


def test_frames_are_equal_width_time_windows() -> None:
    data = pd.DataFrame({"Time": [0.0, 9.9, 10.0, 59.0, 119.9, 120.0]})
    assert assign_frames(data, "Time", _frames()).tolist() == [1, 1, 2, 6, 12, 12]


def test_equal_count_frames_follow_quantiles_of_sparse_time() -> None:
    # Most rows early, a few late: equal-width windows would leave the middle empty.
    data = pd.DataFrame({"Time": [1, 2, 3, 4, 5, 6, 1000, 2000]})
    frames = assign_frames(data, "Time", _frames("count", count=4))
    assert frames.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_without_a_time_column_frames_follow_row_order() -> None:
    data = pd.DataFrame({"x": range(10)})
    assert assign_frames(data, None, _frames(count=5)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_calendar_periods_of_a_datetime_column() -> None:
    stamps = pd.to_datetime(["2024-01-03", "2024-01-31", "2024-02-01", "2024-04-30"])
    data = pd.DataFrame({"when": stamps})
    assert assign_frames(data, "when", _frames("period", 4, "month")).tolist() == [1, 1, 2, 4]
    weeks = assign_frames(data, "when", _frames("period", 20, "week")).tolist()
    assert weeks[0] == 1 and weeks[1] == 5  # Jan 3 (week 1) and Jan 31 (week 5)
    with pytest.raises(DataError, match=r"frames\.count 3 months"):
        assign_frames(data, "when", _frames("period", 3, "month"))


def test_stratified_sample_keeps_rare_positives_in_every_frame() -> None:
    data = pd.DataFrame({"frame": [1] * 1000 + [2] * 1000, "y": ([1] + [0] * 999) * 2})
    sample = stratified_sample(data, ["frame", "y"], 0.01, seed=3, target="y")
    assert sample.groupby("frame")["y"].sum().tolist() == [1, 1]
    assert len(sample) == 2 + 2 * round(999 * 0.01)
    again = stratified_sample(data, ["frame", "y"], 0.01, seed=3, target="y")
    pd.testing.assert_frame_equal(sample, again)


def test_ingest_splits_every_row_into_exactly_one_frame(settings) -> None:
    raw = generate(settings.generator, settings.frames.count)
    frames, summary = ingest(raw, settings)
    assert sorted(frames) == list(range(1, 13))
    assert sum(len(f) for f in frames.values()) == len(raw) == summary["rows"]
    assert summary["positives"] == int(raw["Class"].sum())


# --- the privacy filter's first half runs before ingest writes anything -----------------

KEY = b"ingest-test-pseudonymisation-key-32+bytes"


def _keyed(settings, pseudonymise_ids: bool = True):
    privacy = settings.environment.privacy.model_copy(update={"pseudonymise_ids": pseudonymise_ids})
    environment = settings.environment.model_copy(update={"privacy": privacy})
    return settings.model_copy(update={"environment": environment})


def test_ingest_drops_direct_identifiers_and_keys_ids(settings) -> None:
    from pipeline.privacy import pseudonymise

    raw = generate(settings.generator.model_copy(update={"rows": 600}), settings.frames.count)
    frames, summary = ingest(raw, _keyed(settings), key=KEY)
    data = pd.concat(frames.values(), ignore_index=True)
    assert "card_number" not in data.columns
    assert set(data["transaction_id"]) == set(pseudonymise(raw["transaction_id"], KEY))
    assert data["transaction_id"].str.fullmatch("[0-9a-f]{32}").all()
    assert summary["privacy"] == {
        "dropped_columns": ["card_number"],
        "pseudonymised_columns": ["transaction_id"],
    }
    # The ids are raw only where the environment says so (dev: synthetic data, no key).
    plain, summary = ingest(raw, settings)
    assert set(pd.concat(plain.values())["transaction_id"]) == set(raw["transaction_id"])
    assert summary["privacy"]["pseudonymised_columns"] == []


def test_ingest_without_the_key_fails_before_writing(project, settings, monkeypatch) -> None:
    from pipeline.errors import ConfigError
    from pipeline.ingest import run

    monkeypatch.delenv("CRISPML_PSEUDONYMISATION_KEY", raising=False)
    with pytest.raises(ConfigError, match="CRISPML_PSEUDONYMISATION_KEY"):
        run(_keyed(settings))
    assert not (project / "data" / "ingested").exists()
    with pytest.raises(ConfigError, match="no key"):
        ingest(generate(settings.generator, settings.frames.count), _keyed(settings))


def test_derived_ids_hash_no_identifier(settings) -> None:
    """An unkeyed hash of the name would let anyone holding the prepared row try names."""
    raw = generate(settings.generator.model_copy(update={"rows": 400}), settings.frames.count)
    raw = raw.drop(columns=["transaction_id"])
    other = raw.copy()
    other["card_number"] = "4000000000000002"
    other["customer_age"] = 77
    other["postcode"] = "99999"
    ids = pd.concat(ingest(raw, settings)[0].values())["transaction_id"]
    again = pd.concat(ingest(other, settings)[0].values())["transaction_id"]
    assert ids.str.fullmatch(r"r[0-9a-f]{16}-\d+").all()
    assert ids.tolist() == again.tolist()


def test_rows_that_differ_only_in_a_direct_identifier_are_not_duplicates(settings) -> None:
    """Ingest marks the repeats while it still sees the identifiers; prepare drops them."""
    from pipeline.config import Prepare
    from pipeline.ingest import REPEATED
    from pipeline.prepare import prepare

    raw = generate(settings.generator.model_copy(update={"rows": 300}), settings.frames.count)
    resent = raw.iloc[[5]].assign(transaction_id="tx-resent")  # the same payment twice
    second_card = raw.iloc[[9]].assign(transaction_id="tx-other", card_number="4000000000000002")
    frames, summary = ingest(pd.concat([raw, resent, second_card]), settings)
    data = pd.concat(frames.values(), ignore_index=True)
    assert int(data[REPEATED].sum()) == 1
    out, report = prepare(
        data, settings.contract, Prepare(), settings.environment.privacy, summary["privacy"]
    )
    assert report["cleaning"]["duplicates_dropped"] == 1
    assert {"tx-other", raw["transaction_id"].iloc[9]} <= set(out["transaction_id"])
    assert "tx-resent" not in set(out["transaction_id"]) and REPEATED not in out.columns


# --- a source read in chunks gives what the same source read as one chunk gives --------


def _chunked(raw: pd.DataFrame, settings, rows: int, key: bytes | None = None):
    from pipeline.ingest import ingest_in_chunks

    frames: dict[int, pd.DataFrame] = {}
    chunks = (raw.iloc[start : start + rows] for start in range(0, len(raw), rows))
    summary = ingest_in_chunks(chunks, settings, frames.__setitem__, key=key)
    return frames, summary


def _same_as_one_chunk(raw: pd.DataFrame, settings, rows: int, key: bytes | None = None) -> None:
    expected, summary = ingest(raw, settings, key=key)
    frames, chunked_summary = _chunked(raw, settings, rows, key)
    assert chunked_summary == summary
    assert sorted(frames) == sorted(expected)
    for number, frame in expected.items():
        pd.testing.assert_frame_equal(frames[number], frame, check_exact=True)


def _with_repeats_across_chunks(settings, rows: int, chunk: int) -> pd.DataFrame:
    raw = generate(settings.generator.model_copy(update={"rows": rows}), settings.frames.count)
    # Row 5 sent again twice and row 7 once, all three in later chunks than the first copy;
    # a customer's age missing in one chunk only makes the column Int64 everywhere.
    again = raw.iloc[[5, 7, 5]].assign(transaction_id=["tx-a", "tx-b", "tx-c"])
    raw = pd.concat([raw.iloc[: chunk + 1], again, raw.iloc[chunk + 1 :]], ignore_index=True)
    raw["customer_age"] = raw["customer_age"].astype("Int64")
    raw.loc[chunk * 2 + 3, "customer_age"] = pd.NA
    return raw


def test_chunks_give_the_one_chunk_result_with_repeats_across_chunks(settings) -> None:
    from pipeline.ingest import REPEATED

    raw = _with_repeats_across_chunks(settings, 900, 200)
    _same_as_one_chunk(raw, settings, 200)
    frames, _ = _chunked(raw, settings, 200)
    data = pd.concat(frames.values(), ignore_index=True)
    assert int(data[REPEATED].sum()) == 3
    assert data["customer_age"].dtype == "Int64"


def test_chunks_give_the_one_chunk_result_when_sampled_keyed_or_derived(settings) -> None:
    raw = _with_repeats_across_chunks(settings, 900, 130)
    data = settings.environment.data.model_copy(update={"sample_fraction": 0.4})
    sampled = settings.model_copy(
        update={"environment": settings.environment.model_copy(update={"data": data})}
    )
    _same_as_one_chunk(raw, sampled, 130)
    _same_as_one_chunk(raw, _keyed(settings), 130, key=KEY)
    # Without ids, identical rows in different chunks still number "-0", "-1", ...
    _same_as_one_chunk(raw.drop(columns=["transaction_id"]), settings, 130)
    _same_as_one_chunk(raw.drop(columns=["transaction_id"]), sampled, 130)


def test_a_hash_collision_is_not_taken_for_a_repeat(settings, monkeypatch) -> None:
    import numpy as np

    import pipeline.ingest as ingest_module

    raw = _with_repeats_across_chunks(settings, 400, 100)
    # Every row hashes alike: only the exact check on values can tell repeats apart.
    monkeypatch.setattr(
        ingest_module, "content_hashes", lambda data, columns: np.zeros(len(data), "uint64")
    )
    _same_as_one_chunk(raw, settings, 100)


def test_chunked_errors_name_field_rule_value_and_the_row(settings) -> None:
    from pipeline.contract import row_locator
    from pipeline.ingest import ingest_in_chunks

    raw = generate(settings.generator.model_copy(update={"rows": 300}), settings.frames.count)
    raw.loc[250, "Amount"] = -5.0
    chunks = (raw.iloc[start : start + 100] for start in range(0, len(raw), 100))
    with pytest.raises(DataError, match=r"'Amount' breaks rule 'min 0': -5\.0.*line 252"):
        ingest_in_chunks(chunks, settings, lambda n, f: None, row_locator(2))
    # A third class in another chunk than the first two is still a third class.
    raw = generate(settings.generator.model_copy(update={"rows": 300}), settings.frames.count)
    raw["Class"] = "no"
    raw.loc[[10, 20], "Class"] = "yes"
    raw.loc[280, "Class"] = "maybe"  # its chunk alone holds two classes, "no" and "maybe"
    dump = settings.contract.model_dump(exclude_none=True)
    for column in dump["columns"]:
        if column.get("name") == "Class":
            del column["allowed"]
            column.update(dtype="string", positive="yes")
    contract = type(settings.contract).model_validate(dump)
    texts = settings.model_copy(update={"contract": contract})
    with pytest.raises(DataError) as whole:
        ingest(raw, texts)
    chunks = (raw.iloc[start : start + 100] for start in range(0, len(raw), 100))
    with pytest.raises(DataError) as chunked:
        ingest_in_chunks(chunks, texts, lambda n, f: None)
    assert str(chunked.value) == str(whole.value)
    with pytest.raises(DataError, match="the source is empty"):
        ingest_in_chunks(iter([raw.iloc[:0]]), settings, lambda n, f: None)


def test_the_generator_in_chunks_is_the_generator(settings) -> None:
    from pipeline.generator import generate_chunks

    config = settings.generator.model_copy(update={"rows": 1000})
    whole = generate(config, settings.frames.count)
    chunks = list(generate_chunks(config, settings.frames.count, 300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    pd.testing.assert_frame_equal(pd.concat(chunks), whole, check_exact=True)
