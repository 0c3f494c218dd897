"""load/: the Locust scenario run headless and bounded, and the check that judges it.

The checker's tests feed it Locust-shaped CSV files (fast): it must fail on a 5xx, on
any other failure and on a p99 above the limit, and pass a clean run. The slow test
runs the real thing for `load.duration_seconds` against `crispml serve --workers 2`
on PostgreSQL, with the limit of params.yaml.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_settings

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "load" / "run.py"

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
FAILURES_HEADER = "Method,Name,Error,Occurrences,First Seen,Last Seen"


def _need_locust() -> None:
    # Never imported here: locust monkey-patches the standard library (gevent) on import.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed")


def _runner():
    spec = importlib.util.spec_from_file_location("load_run", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _csvs(folder: Path, *, failed: int, p99: int, failures: list[str]) -> tuple[Path, Path]:
    stats = folder / "load_stats.csv"
    row = "{t},{n},1000,{f},20,25,2,400,300,100.0,0.0,20,25,30,35,50,80,120,{p},300,400,400"
    stats.write_text(
        "\n".join(
            [
                STATS_HEADER,
                row.format(t="POST", n="POST /v1/score (1 record)", f=failed, p=p99),
                row.format(t="", n="Aggregated", f=failed, p=p99),
            ]
        )
        + "\n"
    )
    failures_csv = folder / "load_failures.csv"
    failures_csv.write_text("\n".join([FAILURES_HEADER, *failures]) + "\n")
    return stats, failures_csv


def test_a_clean_run_passes(tmp_path: Path) -> None:
    verdict = _runner().check(*_csvs(tmp_path, failed=0, p99=150, failures=[]), 500.0)
    assert verdict["passed"], verdict
    assert (verdict["requests"], verdict["p99_ms"], verdict["five_xx"]) == (1000, 150.0, 0)


def test_a_single_5xx_fails_the_run(tmp_path: Path) -> None:
    failure = "POST,POST /v1/score (1 record),CatchResponseError('status 503'),1,0,0"
    verdict = _runner().check(*_csvs(tmp_path, failed=1, p99=150, failures=[failure]), 500.0)
    assert not verdict["passed"]
    assert verdict["five_xx"] == 1
    assert verdict["reasons"] == ["1 answers were 5xx"]


def test_other_failures_fail_the_run_too(tmp_path: Path) -> None:
    failure = "GET,GET /v1/scores/{score_id},CatchResponseError('status 404'),2,0,0"
    verdict = _runner().check(*_csvs(tmp_path, failed=2, p99=150, failures=[failure]), 500.0)
    assert not verdict["passed"] and verdict["five_xx"] == 0
    assert "2 other requests failed" in verdict["reasons"][0]


def test_a_p99_above_the_limit_fails_the_run(tmp_path: Path) -> None:
    limit = load_settings(REPO).load.max_p99_ms
    over = int(limit) + 1
    verdict = _runner().check(*_csvs(tmp_path, failed=0, p99=over, failures=[]), limit)
    assert not verdict["passed"]
    assert verdict["reasons"] == [f"p99 {over} ms is above the limit of {limit:g} ms"]


@pytest.mark.parametrize("host", ["10.0.0.8", "192.168.1.2", "example.org", "0.0.0.0"])
def test_the_runner_refuses_any_host_but_this_machine(host: str, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        _runner().main(["--host", host])
    assert stopped.value.code == 2
    assert f"refusing --host {host}" in capsys.readouterr().err


def test_the_scenario_refuses_any_host_but_this_machine(tmp_path: Path) -> None:
    """Locust run on the scenario directly (not through the runner) stops before any user
    starts. 0.0.0.0 is not loopback, but were it loaded it would reach this machine."""
    _need_locust()
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(REPO / "load" / "locustfile.py"),
         "--headless", "-u", "1", "-r", "1", "-t", "5s", "--host", "http://0.0.0.0:9",
         "--csv", str(tmp_path / "refused")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to load 'http://0.0.0.0:9'" in done.stderr
    stats = tmp_path / "refused_stats.csv"  # Locust opens its files first: none counted
    assert not stats.exists() or all(
        row["Request Count"] == "0" for row in csv.DictReader(stats.open())
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_a_short_bounded_run_has_no_5xx_and_a_p99_within_the_limit(tmp_path: Path) -> None:
    _need_locust()
    url = os.environ.get("CRISPML_TEST_DATABASE_URL")
    if not url:
        pytest.skip("CRISPML_TEST_DATABASE_URL is not set: the load test runs on PostgreSQL")
    from tests.service.conftest import BUILDER, delete_environment, make_repo, unique_env

    registry = tmp_path / "registry"
    registry.mkdir()
    built = subprocess.run(
        [sys.executable, str(BUILDER), str(registry)], capture_output=True, text=True, cwd=registry
    )
    assert built.returncode == 0, built.stderr[-3000:]
    tracking_uri = json.loads((registry / "registry.json").read_text())["tracking_uri"]
    environment = unique_env("load")
    root = make_repo(tmp_path / "repo", env=environment, store_url=url, alias="dev")
    params = load_settings(root).load
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRISPML_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    out = tmp_path / "out"
    try:
        done = subprocess.run(
            [sys.executable, str(RUNNER), "--root", str(root), "--workers", "2", "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=params.duration_seconds + 400,
        )
    finally:
        delete_environment(url, environment)
    assert (out / "verdict.json").exists(), f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    verdict = json.loads((out / "verdict.json").read_text())
    assert done.returncode == 0, json.dumps(verdict, indent=2)
    assert verdict["five_xx"] == 0 and verdict["failures"] == 0
    assert verdict["p99_ms"] <= params.max_p99_ms
    assert verdict["requests"] > params.users * params.duration_seconds  # it really loaded
    assert set(verdict["by_request"]) == {
        "POST /v1/score (1 record)",
        "POST /v1/score (10 records)",
        "POST /v1/labels",
        "GET /v1/scores/{score_id}",
    }
    assert (out / "load.html").stat().st_size > 10_000
    assert (out / "load_stats_history.csv").exists()
