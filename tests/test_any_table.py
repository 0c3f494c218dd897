"""The general contract: no time, no id, categories, booleans with tokens, gaps, string targets.

Each test uses a small hand-made table with exactly the trait under test, through the
real contract code, the real feature plan and the real model; the three public tables
and the real fraud data run end to end in tests/test_real_data_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import Contract
from pipeline.contract import derive_record_ids, row_locator, validate
from pipeline.errors import DataError, ServiceUnavailable
from pipeline.sources import read_file

CONTRACT = {
    "columns": [
        {"name": "when", "role": "time", "dtype": "datetime"},
        {"name": "colour", "role": "feature", "dtype": "string", "allowed": ["red", "blue"]},
        {"name": "region", "role": "feature", "dtype": "string", "nullable": True},
        {
            "name": "student",
            "role": "feature",
            "dtype": "bool",
            "true_values": ["Y"],
            "false_values": ["N"],
        },
        {"name": "income", "role": "feature", "dtype": "float", "min": 0, "nullable": True},
        {
            "name": "status",
            "role": "target",
            "dtype": "string",
            "allowed": ["good", "bad"],
            "positive": "bad",
        },
    ]
}


def table(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    bad = rng.uniform(size=rows) < 0.3
    return pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=rows, freq="6h").strftime("%Y-%m-%dT%H:%M"),
            "colour": np.where(bad, "red", rng.choice(["red", "blue"], size=rows)),
            "region": rng.choice(["north", "south", None], size=rows),
            "student": rng.choice(["Y", "N"], size=rows),
            "income": np.where(rng.uniform(size=rows) < 0.1, np.nan, rng.gamma(2, 1000, rows)),
            "status": np.where(bad, "bad", "good"),
        }
    )


@pytest.fixture
def contract() -> Contract:
    return Contract.model_validate(CONTRACT)


def test_types_tokens_and_the_positive_class(contract: Contract) -> None:
    out = validate(table(), contract)
    assert out["when"].dtype == "datetime64[ns]"
    assert set(out["student"].unique()) == {0.0, 1.0}
    assert out["status"].dtype == "int64"
    assert (out["status"] == 1).sum() == (table()["status"] == "bad").sum()
    assert out["region"].isna().any() and out["income"].isna().any()


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("when", "2024-13-45", "datetime ISO-8601"),
        ("colour", "green", "allowed"),
        ("status", "ugly", "allowed"),
        ("student", "maybe", "bool tokens"),
    ],
)
def test_bad_values_name_column_rule_value_and_the_files_line(
    contract: Contract, tmp_path: Path, column: str, value: str, rule: str
) -> None:
    data = table()
    data.loc[7, column] = value
    data.to_csv(tmp_path / "t.csv", index=False)
    raw = read_file(str(tmp_path / "t.csv"), "auto", tmp_path, contract, None)
    with pytest.raises(DataError) as caught:
        validate(raw, contract, row_locator(raw.attrs.get("first_line")))
    message = str(caught.value)
    assert caught.value.field == column and rule in caught.value.rule and value in message
    # Row 7 (from 0) is line 9 of the file: line 1 is the header.
    assert "first at line 9" in message


def test_a_third_target_value_is_refused_without_allowed() -> None:
    spec = {**CONTRACT["columns"][-1]}
    spec.pop("allowed")
    contract = Contract.model_validate({"columns": [*CONTRACT["columns"][:-1], spec]})
    data = table()
    data.loc[3, "status"] = "unknown"
    with pytest.raises(DataError, match=r"'status' breaks rule 'two classes.*'unknown'"):
        validate(data, contract)


def test_a_date_format_in_the_contract() -> None:
    columns = [dict(c) for c in CONTRACT["columns"]]
    columns[0]["format"] = "%d/%m/%Y"
    contract = Contract.model_validate({"columns": columns})
    data = table(rows=4).assign(when=["31/01/2024", "01/02/2024", "02/02/2024", "03/02/2024"])
    assert validate(data, contract)["when"].dt.month.tolist() == [1, 2, 2, 2]
    with pytest.raises(DataError, match="datetime format"):
        validate(data.assign(when="2024-01-31"), contract)


def test_derived_ids_are_stable_and_keep_identical_rows_apart(contract: Contract) -> None:
    data = validate(pd.concat([table(), table().iloc[:5]], ignore_index=True), contract)
    columns = [c for c in data.columns if c != "status"]
    first, again = derive_record_ids(data, columns), derive_record_ids(data, columns)
    assert first.tolist() == again.tolist()
    assert first.is_unique
    # Row 0 and its copy (row 240) share the content hash and differ in the occurrence.
    assert first[0].rsplit("-", 1)[0] == first[240].rsplit("-", 1)[0]
    assert (first[0][-2:], first[240][-2:]) == ("-0", "-1")


def test_prepare_drops_duplicates_ignoring_the_id(settings) -> None:
    from pipeline.prepare import prepare

    contract = Contract.model_validate(CONTRACT)
    data = validate(table(), contract)
    data = pd.concat([data, data.iloc[:3]], ignore_index=True)
    data["record_id"] = derive_record_ids(data, [c for c in data.columns if c != "status"])
    data["frame"] = 1
    out, report = prepare(
        data,
        contract,
        settings.prepare.model_copy(update={"missing": "fail"}),
        settings.environment.privacy.model_copy(update={"generalise": {}, "min_k": None}),
        None,
    )
    assert report["cleaning"]["duplicates_dropped"] == 3 and len(out) == len(table())


@pytest.mark.parametrize(
    "algorithm", ["hist_gradient_boosting", "random_forest", "logistic_regression"]
)
def test_categories_gaps_and_unseen_values_score_with_every_algorithm(
    settings, contract: Contract, algorithm: str
) -> None:
    from pipeline.features import plan_features
    from pipeline.train import fit_model

    curate = settings.curate.model_copy(
        update={
            "features": settings.curate.features.model_copy(
                update={"log": ["income"], "time_of_day": "when"}
            )
        }
    )
    train = settings.train.model_copy(update={"algorithm": algorithm})
    local = settings.model_copy(update={"contract": contract, "curate": curate, "train": train})
    data = validate(table(600), contract)
    plan = plan_features(local, data)
    assert plan.categorical == ["colour", "region"] and plan.log == ["income"]
    model = fit_model(data, plan, local)
    # Categories, gaps, a log and a datetime clock, all of scikit-learn's or numpy's
    # parts: the model loads without code of ours (pipeline.saved_model).
    from pipeline.saved_model import check_loadable, untrusted_types

    assert untrusted_types(model) == []
    check_loadable(model)
    probability = model.predict_proba(data[local.model_inputs])[:, 1]
    assert np.isfinite(probability).all()
    # The "bad" rows are all red: every algorithm must find that.
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data["status"], probability) > 0.7
    unseen = data[local.model_inputs].head(3).copy()
    unseen["colour"] = ["purple", None, "red"]
    unseen["region"] = ["atlantis", None, "north"]
    unseen["income"] = [np.nan, 5.0, np.nan]
    assert np.isfinite(model.predict_proba(unseen)[:, 1]).all()


def _crispml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def _use_table(project: Path, data: pd.DataFrame, path: str = "table.csv") -> None:
    data.to_csv(project / "table.csv", index=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["contract"] = CONTRACT
    params["curate"]["features"] = {"log": [], "time_of_day": None, "scale": True}
    params["report"]["slices"] = [{"column": "colour"}]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    overlay_path = project / "environments" / "dev" / "params.yaml"
    overlay = yaml.safe_load(overlay_path.read_text())
    overlay["data"]["source"] = {"kind": "file", "path": path}
    overlay["privacy"]["generalise"] = {}
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False))


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("when", "yesterday", ["'when'", "datetime ISO-8601", "yesterday", "line 12"]),
        ("colour", "green", ["'colour'", "allowed", "green", "line 12"]),
        ("status", "ugly", ["'status'", "allowed", "ugly", "line 12"]),
    ],
    ids=["unparseable-date", "category-outside-allowed", "third-target-value"],
)
def test_bad_table_exits_4_and_writes_nothing(project: Path, column, value, words) -> None:
    data = table()
    data.loc[10, column] = value
    _use_table(project, data)
    result = _crispml("ingest", cwd=project)
    assert result.returncode == 4, result.stderr
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "data" / "ingested").exists()


def test_a_missing_source_file_exits_6_with_its_path(project: Path) -> None:
    _use_table(project, table(), path="nowhere/table.csv")
    for step in ("source", "ingest"):
        result = _crispml(step, cwd=project)
        assert result.returncode == ServiceUnavailable.exit_code, result.stderr
        assert "nowhere/table.csv" in result.stderr and "Traceback" not in result.stderr


def test_the_source_fingerprint_changes_exactly_when_the_data_does(project: Path) -> None:
    _use_table(project, table())
    first = _crispml("source", cwd=project)
    assert first.returncode == 0, first.stderr
    fingerprint = project / "data" / "source.json"
    before = fingerprint.read_bytes()
    assert _crispml("source", cwd=project).returncode == 0
    assert fingerprint.read_bytes() == before
    table(seed=1).to_csv(project / "table.csv", index=False)
    assert _crispml("source", cwd=project).returncode == 0
    assert fingerprint.read_bytes() != before


def test_dvc_repro_re_runs_ingest_when_the_source_file_changes(project: Path) -> None:
    """Never "up to date" over changed data: the real dvc, on a CSV source."""

    def repro() -> str:
        result = subprocess.run(
            ["dvc", "repro", "ingest"], cwd=project, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    _use_table(project, table())
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=project, check=True)
    assert "Running stage 'ingest'" in repro()
    assert "Running stage 'ingest'" not in repro()
    table(seed=2).to_csv(project / "table.csv", index=False)
    assert "Running stage 'ingest'" in repro()
