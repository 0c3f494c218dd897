"""Shared fixtures: a throwaway copy of the project on tiny data, and settings for it.

Tests never touch the working tree's data, MLflow database or score store: each one
that needs a project gets its own copy under pytest's tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "pipeline",
    "params.yaml",
    "dvc.yaml",
    "environments",
    "pyproject.toml",
    ".gitignore",
]

# Small enough for seconds, rich enough in positives for every split to have both classes.
SMALL_ROWS = 6000
SMALL_FRAUD_RATE = 0.03


def set_param(text: str, key: str, value: str) -> str:
    """Change the first `key:` line of a YAML text, keeping every comment in place."""
    new, count = re.subn(
        rf"(?m)^(\s*{re.escape(key)}:)[ \t]*[^\n#]*?(?=[ \t]*(?:#|$))",
        rf"\g<1> {value}",
        text,
        count=1,
    )
    assert count == 1, f"no {key!r} in the text"
    return new


def copy_project(
    target: Path, rows: int = SMALL_ROWS, fraud_rate: float = SMALL_FRAUD_RATE
) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "kustomize")
            )
        else:
            shutil.copy2(source, target / name)
    params = target / "params.yaml"
    text = set_param(params.read_text(), "rows", str(rows))
    params.write_text(set_param(text, "fraud_rate", str(fraud_rate)))
    return target


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny copy of the project with its own MLflow database and score store."""
    root = copy_project(tmp_path / "project")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CRISPML_STORE_URL", raising=False)
    monkeypatch.setenv("CRISPML_GIT_COMMIT", "0" * 40)
    return root


@pytest.fixture
def settings(project: Path):
    from pipeline.config import load_settings

    return load_settings(project)


@pytest.fixture(scope="session", autouse=True)
def warm_processes_of_this_session() -> object:
    """Stage commands of the tests use warm processes of their own, stopped at the end.

    The tests then never run in a warm process a developer's own commands started (or
    the reverse), and leave none behind. A short folder: a socket path has ~100 bytes.
    """
    import tempfile

    from pipeline import warm

    folder = Path(tempfile.mkdtemp(prefix="cw-"))
    # Each project copy (its own PYTHONPATH) gets a warm process of its own; a short idle
    # time keeps the copies a test has finished with from holding memory for minutes.
    chosen = {warm.DIR_VARIABLE: str(folder / "warm"), warm.IDLE_VARIABLE: "30"}
    previous = {name: os.environ.get(name) for name in chosen}
    os.environ.update(chosen)
    yield
    warm.stop_all()
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(folder, ignore_errors=True)


# What MLflow or a stage would leave at the root of the working tree if a test ran it there.
ROOT_LEFTOVERS = ("mlruns", "mlartifacts", "mlflow.db", "scores.db")


@pytest.fixture(scope="session", autouse=True)
def working_tree_untouched() -> object:
    """Fail the run if any test wrote MLflow or store files into the working tree.

    Such a file means some code fell back to the process's directory (MLflow's default
    `./mlruns`, say) instead of the project it was given.
    """
    before = {name for name in ROOT_LEFTOVERS if (PROJECT / name).exists()}
    yield
    after = {name for name in ROOT_LEFTOVERS if (PROJECT / name).exists()}
    assert after <= before, f"tests wrote {sorted(after - before)} into {PROJECT}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CRISPML_FORBID_SKIPS=1 (set by .ci/run) a skip is a failure.

    Locally a test that needs PostgreSQL or gitlab-ci-local skips with its reason;
    in CI those services are provided, so a skip would only hide a broken set-up.
    """
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("CRISPML_FORBID_SKIPS") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped, but CRISPML_FORBID_SKIPS=1 forbids skips: {report.longrepr}"


def postgres_url() -> str | None:
    return os.environ.get("CRISPML_TEST_DATABASE_URL") or None
