from __future__ import annotations

import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.label import clean_truth, match


def test_feed_is_cleaned_and_the_last_word_wins() -> None:
    feed = pd.DataFrame({"id": ["a", "b", "a"], "label": [0, 1, 1]})
    out = clean_truth(feed, "id", "label")
    assert dict(zip(out["record_id"], out["label"], strict=True)) == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    ("feed", "column", "rule"),
    [
        (pd.DataFrame({"id": ["a"]}), "label", "required column"),
        (pd.DataFrame({"id": ["a"], "label": [2]}), "label", "allowed"),
        (pd.DataFrame({"id": ["a"], "label": ["yes"]}), "label", "allowed"),
        (pd.DataFrame({"id": [None], "label": [1]}), "id", "not null"),
    ],
)
def test_bad_feeds_name_column_and_rule(feed, column, rule) -> None:
    with pytest.raises(DataError) as caught:
        clean_truth(feed, "id", "label")
    assert caught.value.field == column and rule in caught.value.rule


def test_only_scored_records_are_labelled() -> None:
    truth = pd.DataFrame({"record_id": ["a", "b", "z"], "label": [1, 0, 1]})
    matched, stats = match(pd.Series(["a", "b", "c"]), truth)
    assert sorted(matched["record_id"]) == ["a", "b"]
    assert stats == {"scored": 3, "labeled": 2, "waiting": 1, "positives": 1}


def test_a_feed_with_raw_ids_joins_the_ids_ingest_keyed(project, settings, monkeypatch) -> None:
    """Ground truth arrives with the source's ids; the store only knows their pseudonyms."""
    from pipeline.config.params import Label, LabelSource
    from pipeline.generator import generate
    from pipeline.ingest import ingest
    from pipeline.label import read_truth

    key = "label-test-pseudonymisation-key-of-32+bytes"
    monkeypatch.setenv("CRISPML_PSEUDONYMISATION_KEY", key)
    privacy = settings.environment.privacy.model_copy(update={"pseudonymise_ids": True})
    feed = LabelSource(kind="file", path="truth.csv", id_column="tx", label_column="fraud")
    keyed = settings.model_copy(
        update={
            "environment": settings.environment.model_copy(update={"privacy": privacy}),
            "label": Label(source=feed),
        }
    )
    raw = generate(settings.generator.model_copy(update={"rows": 300}), 12)
    frames, _ = ingest(raw, keyed, key=key.encode())
    scored = pd.concat(frames.values())["transaction_id"]
    feed_rows = raw[["transaction_id", "Class"]].set_axis(["tx", "fraud"], axis=1)
    feed_rows.to_csv(project / "truth.csv", index=False)
    truth, origin = read_truth(keyed, 7)
    assert origin == "file:truth.csv"
    assert not truth["record_id"].isin(raw["transaction_id"]).any()
    _, stats = match(scored, truth)
    assert stats["labeled"] == len(raw) and stats["waiting"] == 0
