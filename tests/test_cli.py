"""The CLI as a person and DVC use it: help, exit codes, and bad input that writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.generator import generate

STEPS = ["ingest", "prepare", "curate", "train", "report", "register", "score", "label", "verify"]


def crispml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize("step", STEPS)
def test_every_step_has_help(step: str, tmp_path: Path) -> None:
    result = crispml(step, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Usage: crispml" in result.stdout and "--root" in result.stdout


def test_env_use_switches_and_refuses_unknown(project: Path) -> None:
    assert crispml("env", "use", "nowhere", cwd=project).returncode == 3
    assert "env: dev" in (project / "params.yaml").read_text()


def _use_csv_source(project: Path, frame) -> None:
    frame.to_csv(project / "source.csv", index=False)
    overlay = project / "environments" / "dev" / "params.yaml"
    overlay.write_text(
        overlay.read_text().replace("kind: generator", "kind: file\n    path: source.csv")
    )


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.drop(columns=["Amount"]), ["'Amount'", "required column"]),
        (
            lambda d: d.assign(V2=d["V2"].astype(object).where(d.index != 10, "n/a")),
            ["'V2'", "type float", "n/a"],
        ),
        (
            lambda d: d.assign(Amount=d["Amount"].where(d.index != 10, -5.0)),
            ["'Amount'", "min 0", "-5.0"],
        ),
        (lambda d: d.iloc[0:0], ["(source)", "at least one row"]),
        (lambda d: d.assign(Class=0), ["'Class'", "at least two classes"]),
    ],
    ids=["missing-column", "wrong-type", "out-of-range", "empty", "single-class"],
)
def test_bad_source_exits_4_naming_column_and_rule_and_writes_nothing(
    project: Path, settings, mutate, words
) -> None:
    good = generate(settings.generator.model_copy(update={"rows": 300}), 12)
    _use_csv_source(project, mutate(good))
    result = crispml("ingest", cwd=project)
    assert result.returncode == 4, result.stderr
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "data" / "ingested").exists()
    assert not (project / "reports" / "ingest.json").exists()
    leftovers = list((project / "data").glob(".*tmp")) if (project / "data").exists() else []
    assert leftovers == []


def test_good_csv_source_round_trips(project: Path, settings) -> None:
    good = generate(settings.generator.model_copy(update={"rows": 300}), 12)
    _use_csv_source(project, good)
    result = crispml("ingest", cwd=project)
    assert result.returncode == 0, result.stderr
    assert len(list((project / "data" / "ingested").glob("frame_*.parquet"))) == 12


def test_exit_codes_are_listed(tmp_path: Path) -> None:
    out = crispml("exit-codes", cwd=tmp_path).stdout
    assert "4  input data breaks the data contract" in out
