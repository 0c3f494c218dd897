"""`crispml replay` on a small generated data set with drift: CT recovers, static does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.evidence import Estimate
from pipeline.replay import arrived_frames, day_verdict, summarise
from tests.conftest import copy_project, set_param

DRIFT_START = 10


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One replay on 30k generated rows, 3 % fraud, a strong fraud-pattern change from day 10."""
    from pipeline import ingest, prepare, replay
    from pipeline.config import load_settings

    root = copy_project(tmp_path_factory.mktemp("replay") / "project", rows=30_000, fraud_rate=0.03)
    params = root / "params.yaml"
    text = params.read_text()
    for key, value in (
        ("start_frame", str(DRIFT_START)),
        ("fraud_pattern_change", "0.9"),
        ("drift_max_rows", "1000"),
        ("max_iter", "60"),  # hist_gradient_boosting: seconds, not minutes, per retrain
    ):
        text = set_param(text, key, value)
    params.write_text(text)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "CRISPML_GIT_COMMIT")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["CRISPML_GIT_COMMIT"] = "0" * 40
    try:
        settings = load_settings(root)
        assert settings.generator.rows == 30_000
        assert settings.train.hyperparameters["max_iter"] == 60
        ingest.run(settings)
        prepare.run(settings)
        exported = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        before = {name: os.environ.get(name) for name in exported}
        result = replay.run(settings, show_progress=False)
        # MLflow mirrors its URIs into os.environ; the throwaway registry must not leak.
        assert {name: os.environ.get(name) for name in exported} == before
        assert "MLFLOW_TRACKING_URI" not in os.environ
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return root, result


def test_continuous_training_recovers_after_drift_and_static_does_not(replayed):
    _, result = replayed
    days = {d["day"]: d for d in result["days"]}
    assert sorted(days) == [7, 8, 9, 10, 11, 12]
    before = [days[d]["pr_auc_static"] for d in (7, 8, 9)]
    after = [days[d]["pr_auc_static"] for d in (11, 12)]
    # The static model loses the fraud pattern that changed.
    assert max(after) < min(before) - 0.1, (before, after)
    # CT retrained on drifted labels and serves the last day far better than static.
    assert days[12]["serving_version"] != days[7]["serving_version"]
    assert days[12]["pr_auc_ct"] > days[12]["pr_auc_static"] + 0.1, days[12]
    assert result["summary"]["drifted_mean_gain"] > 0.03
    # The model serving day 12 was trained on a window that holds a drifted frame.
    assert max(days[12]["serving_trained_on"]) >= DRIFT_START
    # Every promotion is a passed comparison on the newest labelled frame.
    for day in result["days"]:
        if day["promoted"]:
            assert day["comparison"]["verdict"] == "passed"
            assert max(day["window"]["test"]) == day["day"]  # label delay 0


def test_every_day_records_what_the_brief_asks(replayed):
    root, result = replayed
    for day in result["days"]:
        for key in ("day", "serving_version", "retrained", "pr_auc_static", "pr_auc_ct"):
            assert key in day
        assert day["gate"]["verdict"] in ("passed", "failed", "insufficient_evidence")
        assert 0.0 <= day["drift_share"] <= 1.0
        assert day["decision"]
    drifted = {d["day"]: d["drift_share"] for d in result["days"]}
    assert drifted[10] > drifted[9]
    on_disk = json.loads((root / "reports" / "replay.json").read_text())
    assert [d["day"] for d in on_disk["days"]] == [7, 8, 9, 10, 11, 12]
    csv = (root / "reports" / "replay" / "pr_auc.csv").read_text().splitlines()
    assert csv[0] == "day,static,ct" and len(csv) == 7
    assert (root / "reports" / "replay" / "drift.csv").is_file()
    page = (root / "reports" / "replay" / "index.html").read_text()
    assert "<table>" in page and "<polyline" in page and "continuous training" in page


def test_the_replay_fills_the_monitoring_workspace(replayed):
    from pipeline import monitoring
    from pipeline.config import load_settings

    root, _ = replayed
    settings = load_settings(root)
    project = monitoring.open_project(settings, name="crispml-replay-dev")
    rows = monitoring.series(project)
    drift = [r for r in rows if "drift" in r["tags"]]
    quality = [r for r in rows if "quality" in r["tags"]]
    assert len(drift) == 6 and len(quality) == 6  # label delay 0: every day has labels


def test_the_environment_registry_and_store_are_untouched(replayed):
    root, _ = replayed
    assert not (root / "mlflow.db").exists()
    assert not (root / "mlruns").exists()
    assert not (root / "data" / "store").exists()


def test_replay_without_prepared_data_names_the_command(tmp_path, monkeypatch):
    from pipeline.cli import cli

    root = copy_project(tmp_path / "project")
    monkeypatch.chdir(root)
    outcome = CliRunner().invoke(cli, ["replay", "--root", str(root)])
    assert outcome.exit_code != 0
    assert "dvc repro prepare" in outcome.output


def estimate(pr_auc, low, high, positives=40, enough=True) -> Estimate:
    return Estimate(pr_auc, low, high, 0.95, positives, 10_000, enough)


def test_day_verdict_fails_only_when_the_whole_interval_is_too_low():
    # Expected 0.8, allowed drop 0.3: the floor is 0.5.
    assert day_verdict(0.1, estimate(0.45, 0.3, 0.6), 0.8, 0.5, 0.3, 9).verdict == "passed"
    failed = day_verdict(0.1, estimate(0.3, 0.2, 0.45), 0.8, 0.5, 0.3, 9)
    assert failed.verdict == "failed" and "below 0.5000" in failed.reasons[0]
    drift = day_verdict(0.6, estimate(0.8, 0.7, 0.9), 0.8, 0.5, 0.3, 9)
    assert drift.verdict == "failed" and "drift share 0.600" in drift.reasons[0]
    few = day_verdict(0.1, estimate(0.1, float("nan"), float("nan"), 5, False), 0.8, 0.5, 0.3, 7)
    assert few.verdict == "insufficient_evidence" and "5 labelled positives" in few.reasons[0]
    assert day_verdict(0.1, None, None, 0.5, 0.3).verdict == "insufficient_evidence"


def test_labels_arrive_after_the_delay():
    assert arrived_frames(9, [7, 8, 9, 10], 0) == [9]
    assert arrived_frames(9, [7, 8, 9, 10], 2) == [7]
    assert arrived_frames(7, [7, 8], 1) == []


def test_summary_measures_the_gain_on_drifted_days():
    days = [
        {"day": 9, "pr_auc_static": 0.8, "pr_auc_ct": 0.8, "retrained": False, "promoted": False},
        {"day": 10, "pr_auc_static": 0.4, "pr_auc_ct": 0.4, "retrained": True, "promoted": True},
        {"day": 11, "pr_auc_static": 0.4, "pr_auc_ct": 0.7, "retrained": False, "promoted": False},
    ]
    summary = summarise(days, 10)
    assert summary["drifted_days"] == [10, 11]
    assert summary["drifted_mean_gain"] == pytest.approx(0.15)
    assert summary["retrained_days"] == [10] and summary["promoted_days"] == [10]
