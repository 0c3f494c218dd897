from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import Generalise, Privacy
from pipeline.errors import ConfigError
from pipeline.privacy import (
    apply_privacy,
    generalise,
    k_anonymity,
    pseudonymisation_key,
    pseudonymise,
)


def test_hmac_is_stable_for_a_key_and_differs_between_keys() -> None:
    ids = pd.Series(["tx1", "tx2", "tx1"])
    a = pseudonymise(ids, b"key-a")
    assert a[0] == a[2] != a[1]
    assert not a.str.contains("tx").any()
    assert pseudonymise(ids, b"key-b")[0] != a[0]


def test_generalisation_bands_and_prefixes() -> None:
    assert generalise(pd.Series([18, 29, 30]), Generalise(bin_width=10)).tolist() == [
        "10-19",
        "20-29",
        "30-39",
    ]
    assert generalise(pd.Series(["75011"]), Generalise(keep_prefix=2)).tolist() == ["75***"]


def test_k_anonymity_is_the_smallest_class() -> None:
    frame = pd.DataFrame({"a": [1, 1, 1, 2, 2], "b": ["x", "x", "x", "y", "y"]})
    assert k_anonymity(frame, ["a", "b"]) == (2, 2)


def test_filter_drops_identifiers_pseudonymises_and_reaches_min_k(settings) -> None:
    from pipeline.contract import validate
    from pipeline.generator import generate

    data = validate(
        generate(settings.generator.model_copy(update={"rows": 3000}), 12), settings.contract
    )
    privacy = settings.environment.privacy.model_copy(update={"pseudonymise_ids": True, "min_k": 5})
    out, report = apply_privacy(data, settings.contract, privacy, b"test-key")
    assert "card_number" not in out.columns
    assert report["dropped_columns"] == ["card_number"]
    assert not out["transaction_id"].str.startswith("tx").any()
    assert out["transaction_id"].is_unique
    assert report["k_anonymity"] >= 5
    assert report["k_anonymity_before_suppression"] < 5
    assert report["suppressed_rows"] > 0
    assert len(out) == len(data)


def test_missing_key_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRISPML_PSEUDONYMISATION_KEY", raising=False)
    with pytest.raises(ConfigError, match="CRISPML_PSEUDONYMISATION_KEY"):
        pseudonymisation_key(Privacy(pseudonymise_ids=True))


def test_a_short_key_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """HMAC-SHA256 needs a key at least as long as its output: 32 bytes."""
    monkeypatch.setenv("CRISPML_PSEUDONYMISATION_KEY", "short-secret-key")
    with pytest.raises(ConfigError) as error:
        pseudonymisation_key(Privacy(pseudonymise_ids=True))
    assert "holds 16 bytes" in str(error.value) and "at least 32" in str(error.value)
    assert "short-secret-key" not in str(error.value)
    monkeypatch.setenv("CRISPML_PSEUDONYMISATION_KEY", "k" * 32)
    assert pseudonymisation_key(Privacy(pseudonymise_ids=True)) == b"k" * 32
