from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Generalise, Privacy
from pipeline.errors import ConfigError, DataError
from pipeline.privacy import (
    classes_to_hide,
    decile_edges,
    generalise,
    generalise_to_bands,
    k_anonymity,
    minimise,
    protect_quasi_identifiers,
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
    # A gap stays a gap, not the text "None" cut to "No**" (a class of its own).
    gaps = pd.Series(["75011", None, np.nan], dtype=object)
    coarse = generalise(gaps, Generalise(keep_prefix=2))
    assert coarse[0] == "75***" and coarse[1:].isna().all()

    # An integer column keeps its digits: 63 is "63", never the float text "63.0".
    ints = pd.Series([63, 7, None], dtype="Int64")
    assert generalise(ints, Generalise(keep_prefix=1)).tolist() == ["6*", "7", None]


def test_coarsened_rows_share_their_label_strings() -> None:
    """Prepare's peak at 10x the data was these columns as one string per row."""
    ages = pd.Series(np.random.default_rng(0).integers(18, 90, 10_000)).astype("Int64")
    ages[::7] = pd.NA
    for coarse in (
        generalise(ages, Generalise(bin_width=10)),
        generalise(ages.astype(str).where(ages.notna()), Generalise(keep_prefix=1)),
        generalise_to_bands(ages, decile_edges(ages)),
    ):
        present = coarse.dropna()
        assert coarse.dtype == object and coarse.isna().sum() == ages.isna().sum()
        # At most one string object per distinct source value, not one per row.
        assert len({id(v) for v in present}) <= ages.nunique() < len(present) / 100


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
    minimised, done = minimise(data, settings.contract, privacy, b"test-key" * 4)
    out, report = protect_quasi_identifiers(minimised, settings.contract, privacy)
    assert "card_number" not in out.columns
    assert done == {"dropped_columns": ["card_number"], "pseudonymised_columns": ["transaction_id"]}
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


# --- k-anonymity is enforced, not only reported ---------------------------------------

QUASI_RULES = {"customer_age": Generalise(bin_width=10), "postcode": Generalise(keep_prefix=2)}


def _people(classes: list[tuple[int, str, int]]) -> pd.DataFrame:
    """Rows of (age, postcode), `count` of each: one equivalence class per tuple."""
    rows = [(age, postcode) for age, postcode, count in classes for _ in range(count)]
    frame = pd.DataFrame(rows, columns=["customer_age", "postcode"])
    frame["Amount"] = range(len(frame))
    return frame


def test_the_suppressed_rows_never_form_a_class_below_min_k(settings) -> None:
    """Suppressing only the two rows of the small class would leave a "*" class of 2."""
    data = _people([(25, "75011", 5), (35, "69001", 6), (45, "13001", 2)])
    privacy = Privacy(generalise=QUASI_RULES, min_k=5)
    _, report = protect_quasi_identifiers(data, settings.contract, privacy)
    assert report["k_anonymity"] == 6 >= report["min_k"]
    # The small class and the smallest class at min_k: 2 + 5 rows.
    assert report["suppressed_rows"] == 7 and report["suppressed_classes"] == 2
    assert report["suppressed_rows_of_classes_at_min_k"] == 5
    out, _ = protect_quasi_identifiers(data, settings.contract, privacy, needed=["customer_age"])
    assert k_anonymity(out, ["customer_age"]) == (6, 2) and len(out) == len(data)


def test_too_few_rows_for_min_k_fail_without_showing_raw_values(settings) -> None:
    data = _people([(25, "75011", 2), (35, "69001", 1)])
    privacy = Privacy(generalise={"customer_age": Generalise(bin_width=10)}, min_k=5)
    with pytest.raises(DataError) as error:
        protect_quasi_identifiers(data, settings.contract, privacy)
    message = str(error.value)
    assert error.value.exit_code == 4
    assert "k-anonymity >= 5" in message and "3 rows with" in message
    assert "75011" not in message and "69001" not in message


def test_classes_to_hide_takes_the_smallest_until_the_hidden_class_reaches_min_k() -> None:
    sizes = np.array([9, 1, 5, 2, 7])
    assert sorted(classes_to_hide(sizes, 5).tolist()) == [1, 2, 3]  # 1 + 2 + 5 rows
    assert sorted(classes_to_hide(np.array([9, 3, 4]), 5).tolist()) == [1, 2]  # 7 rows
    assert classes_to_hide(np.array([9, 5]), 5).tolist() == []
    # Rows already all "*" count towards the hidden class.
    assert classes_to_hide(np.array([9, 2]), 5, already_hidden=3).tolist() == [1]


def _random_people(seed: int) -> tuple[pd.DataFrame, Privacy]:
    """Mostly large classes and a few small ones: the case where suppression alone fails."""
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(3, 200))
    prefixes = rng.choice([75, 69], rows, p=[0.95, 0.05])
    numbers = rng.integers(0, 999, rows)
    data = pd.DataFrame(
        {
            "customer_age": np.clip(rng.normal(45, 10, rows), 18, 95).astype(int),
            "postcode": [f"{p}{n:03d}" for p, n in zip(prefixes, numbers, strict=True)],
            "Amount": rng.random(rows),
        }
    )
    return data, Privacy(generalise=QUASI_RULES, min_k=int(rng.integers(2, 8)))


def test_any_data_ends_at_min_k_or_fails(settings) -> None:
    kept = []
    for seed in range(40):
        data, privacy = _random_people(seed)
        try:
            _, report = protect_quasi_identifiers(data, settings.contract, privacy)
        except DataError:
            assert len(data) < privacy.min_k, seed
            continue
        assert report["k_anonymity"] >= privacy.min_k, seed
        kept.append((data, privacy, report["k_anonymity"]))
    needed = ["customer_age", "postcode"]
    for data, privacy, k in kept:
        out, _ = protect_quasi_identifiers(data, settings.contract, privacy, needed=needed)
        assert k_anonymity(out, needed)[0] == k and len(out) == len(data)


# --- quasi-identifiers without a rule ----------------------------------------------------


def test_a_numeric_quasi_identifier_without_a_rule_gets_decile_bands(settings) -> None:
    """Before: suppression wrote "*" into the numeric column and prepare crashed."""
    data = _people([(age, "75011", 3) for age in range(20, 80)])
    data["customer_age"] = data["customer_age"].astype("float64")
    privacy = Privacy(generalise={"postcode": Generalise(keep_prefix=2)}, min_k=5)
    _, report = protect_quasi_identifiers(data, settings.contract, privacy)
    out, _ = protect_quasi_identifiers(data, settings.contract, privacy, needed=["customer_age"])
    rule = report["generalised_columns"]["customer_age"]
    assert rule["default"] == "decile bands" and len(rule["edges"]) == 9
    # Open first and last bands: neither the minimum (20) nor the maximum (79) shows.
    assert out["customer_age"].iloc[0] == f"<{rule['edges'][0]:g}"
    assert out["customer_age"].iloc[-1] == f">={rule['edges'][-1]:g}"
    assert report["k_anonymity"] >= 5 and report["suppressed_rows"] == 0


def test_decile_bands_keep_missing_values_missing() -> None:
    values = pd.Series([1.0, None, 5.0, 10.0])
    edges = decile_edges(values)
    assert edges == sorted(set(edges)) and min(edges) >= 1 and max(edges) <= 10
    banded = generalise_to_bands(values, [5.0])
    assert banded.tolist() == ["<5", None, ">=5", ">=5"]
    assert generalise_to_bands(values, [2.0, 6.0]).tolist() == ["<2", None, "[2, 6)", ">=6"]


def test_a_text_quasi_identifier_without_a_rule_is_suppressed_where_needed(settings) -> None:
    data = _people([(25, "75011", 6), (25, "69001", 2), (25, "13001", 5)])
    privacy = Privacy(generalise={"customer_age": Generalise(bin_width=10)}, min_k=5)
    _, report = protect_quasi_identifiers(data, settings.contract, privacy)
    assert report["k_anonymity"] == 6
    assert report["not_generalised_quasi_identifiers"] == ["postcode"]
    out, _ = protect_quasi_identifiers(data, settings.contract, privacy, needed=["postcode"])
    assert out["postcode"].value_counts().to_dict() == {"*": 7, "75011": 6}


# --- quasi-identifiers nothing reads are not stored --------------------------------------


def test_quasi_identifiers_nothing_reads_are_dropped_after_the_report(settings) -> None:
    data = _people([(25, "75011", 6), (35, "69001", 6)])
    privacy = Privacy(generalise=QUASI_RULES, min_k=5)
    out, report = protect_quasi_identifiers(data, settings.contract, privacy)
    assert not {"customer_age", "postcode"} & set(out.columns)
    assert report["dropped_quasi_identifiers"] == ["customer_age", "postcode"]
    assert report["k_anonymity"] == 6
    assert report["quasi_identifiers"] == ["customer_age", "postcode"]
    kept, report = protect_quasi_identifiers(data, settings.contract, privacy, needed={"postcode"})
    assert "postcode" in kept.columns and "customer_age" not in kept.columns
    assert report["dropped_quasi_identifiers"] == ["customer_age"]
