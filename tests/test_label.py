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
