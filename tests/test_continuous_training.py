"""Continuous training: the rolling window, its refusals, the trigger and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FRAME, ContinuousTraining
from pipeline.continuous_training import (
    TRIGGER_AGE,
    TRIGGER_DRIFT,
    TRIGGER_NO_MODEL,
    TRIGGER_VERIFY,
    FrameLabels,
    choose_window,
    count_labels,
    judge,
    labelled_rows,
    retrain_decision,
)


def params(**changes) -> ContinuousTraining:
    base = {
        "window_frames": 6,
        "valid_frames": 1,
        "test_frames": 1,
        "min_labels": {"rows": 100, "positives": 10},
        "label_delay_days": 1,
        "max_model_age_days": 3,
    }
    return ContinuousTraining.model_validate({**base, **changes})


def frames(numbers, rows=1000, positives=5) -> list[FrameLabels]:
    return [FrameLabels(n, rows, positives) for n in numbers]


def test_window_takes_the_newest_labelled_frames_test_last():
    choice = choose_window(frames(range(1, 11)), params())
    assert choice.ok, choice.reason
    window = choice.window
    assert window.test == (10,)
    assert window.valid == (9,)
    assert window.train == (5, 6, 7, 8)
    assert window.frames == [5, 6, 7, 8, 9, 10]
    assert window.rows == 6000 and window.positives == 30
    assert window.threshold_frames == (9,)


def test_window_skips_frames_without_labels_and_ignores_their_order():
    labelled = [*frames([9, 3, 7]), FrameLabels(8, 0, 0), *frames([4, 1])]
    window = choose_window(
        labelled, params(window_frames=4, min_labels={"rows": 1, "positives": 1})
    )
    assert window.ok
    assert window.window.frames == [3, 4, 7, 9]
    assert window.window.test == (9,) and window.window.valid == (7,)


def test_without_validation_frames_the_threshold_is_chosen_on_the_test_frames():
    window = choose_window(frames(range(1, 8)), params(valid_frames=0)).window
    assert window.valid == ()
    assert window.train == (2, 3, 4, 5, 6)
    assert window.threshold_frames == window.test == (7,)


def test_test_frames_widen_to_the_evidence_minimum_and_the_window_grows():
    labelled = [
        *frames(range(1, 7), positives=50),
        FrameLabels(7, 900, 10),
        FrameLabels(8, 900, 15),
    ]
    choice = choose_window(labelled, params(window_frames=4, valid_frames=0), 30)
    assert choice.ok, choice.reason
    # 15 + 10 positives are too few: frame 6 joins the test, and training keeps 3 frames.
    assert choice.window.test == (6, 7, 8)
    assert choice.window.train == (3, 4, 5)
    assert choose_window(labelled, params(window_frames=4, valid_frames=0), 1).window.test == (8,)


def test_window_uses_all_labelled_frames_when_fewer_than_the_window():
    window = choose_window(frames([1, 2, 3]), params(min_labels={"rows": 1, "positives": 1}))
    assert window.window.train == (1,)


def test_refuses_too_few_labelled_frames_naming_the_counts():
    choice = choose_window(frames([4, 5]), params())
    assert not choice.ok and choice.window is None
    assert "2 labelled frame(s) [4, 5]" in choice.reason
    assert "at least 3" in choice.reason


@pytest.mark.parametrize(
    ("rows", "positives", "what"),
    [(10, 1, "60 labelled rows"), (1000, 1, "6 positives")],
)
def test_refuses_below_min_labels_naming_the_counts(rows, positives, what):
    choice = choose_window(frames(range(1, 7), rows=rows, positives=positives), params())
    assert not choice.ok
    assert "not enough labels" in choice.reason
    assert what in choice.reason
    assert "at least 100 rows and 10 positives" in choice.reason


def test_refuses_a_part_with_one_class():
    labelled = [*frames(range(1, 6), positives=5), FrameLabels(6, 1000, 0)]
    choice = choose_window(labelled, params(), min_test_positives=0)
    assert not choice.ok
    assert "test frames [6] hold 0 positives" in choice.reason
    labelled = [*frames(range(1, 5), positives=0), *frames([5, 6], positives=20)]
    choice = choose_window(labelled, params())
    assert not choice.ok
    assert "train frames [1, 2, 3, 4] hold 0 positives" in choice.reason


def test_params_need_a_frame_to_train():
    with pytest.raises(ValueError, match="at least one frame must train"):
        params(window_frames=2, valid_frames=1, test_frames=1)


def test_count_labels_per_frame():
    rows = pd.DataFrame({FRAME: [3, 3, 3, 5], "Class": [1, 0, 0, 1]})
    assert count_labels(rows, "Class") == [FrameLabels(3, 3, 1), FrameLabels(5, 1, 1)]


def test_labelled_rows_keep_history_and_only_arrived_labels_elsewhere():
    prepared = {
        1: pd.DataFrame({"id": ["a", "b"], "Class": [0, 1], "x": [1.0, 2.0]}),
        7: pd.DataFrame({"id": ["c", "d", "e"], "Class": [0, 0, 0], "x": [3.0, 4.0, 5.0]}),
    }
    # The store says d is a fraud (the prepared target is not what counts) and e has no label.
    labels = pd.DataFrame({"record_id": ["c", "d"], "label": [0, 1]})
    rows = labelled_rows(prepared, labels, [1], "id", "Class")
    assert rows["id"].tolist() == ["a", "b", "c", "d"]
    assert rows["Class"].tolist() == [0, 1, 0, 1]
    assert rows[FRAME].tolist() == [1, 1, 7, 7]
    assert labelled_rows(prepared, None, [1], "id", "Class")["id"].tolist() == ["a", "b"]


def test_retrain_decision_says_why():
    p = params(retrain_drift_share=0.2)
    assert retrain_decision(None, None, None, p)[0] == TRIGGER_NO_MODEL
    failed = {"passed": False, "reasons": ["drift share 0.7 is above the maximum 0.5"]}
    trigger, message = retrain_decision(failed, 0.7, 0.5, p)
    assert trigger == TRIGGER_VERIFY and "drift share 0.7" in message
    trigger, message = retrain_decision({"passed": True}, 0.25, 0.5, p)
    assert trigger == TRIGGER_DRIFT and "retrain_drift_share 0.2" in message
    trigger, message = retrain_decision({"passed": True}, 0.1, 3.0, p)
    assert trigger == TRIGGER_AGE and "max_model_age_days 3" in message
    trigger, message = retrain_decision({"passed": True, "summary": "PR-AUC 0.8"}, 0.1, 1.0, p)
    assert trigger is None
    assert "verify gate passed (PR-AUC 0.8)" in message and "model age 1.0 days" in message
    assert "drift share 0.100" in message
    never = params(max_model_age_days=None, retrain_drift_share=None)
    assert retrain_decision({"passed": True}, 0.9, 99.0, never)[0] is None


def test_judge_promotes_only_a_candidate_that_is_not_worse(settings):
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=4000) < 0.02).astype(int)
    good = y * 0.6 + rng.uniform(size=len(y)) * 0.5
    noise = rng.uniform(size=len(y))
    assert judge(y, good, noise, settings, "3")["verdict"] == "passed"
    worse = judge(y, noise, good, settings, "3")
    assert worse["verdict"] == "failed"
    assert "champion v3" in worse["reason"]
    first = judge(y, good, None, settings)
    assert first["verdict"] == "passed" and first["champion_pr_auc"] is None
    few = y.copy()
    few[np.flatnonzero(few)[5:]] = 0
    assert judge(few, good, noise, settings)["verdict"] == "insufficient_evidence"


# --------------------------------------------------------------------------- the CI entry point


@pytest.fixture(scope="module")
def ci_project(tmp_path_factory: pytest.TempPathFactory):
    """A small project with a champion at @dev, scores and labels for frames 7-10 in its store."""
    import os

    from pipeline import continuous_training as ct
    from pipeline import ingest, prepare, registry, tracking
    from pipeline.config import load_settings
    from pipeline.label import clean_truth
    from pipeline.score import score_rows
    from pipeline.store import ScoreStore, new_score_id, utcnow
    from tests.conftest import copy_project, set_param

    root = copy_project(tmp_path_factory.mktemp("ct") / "project", rows=12_000, fraud_rate=0.05)
    text = (root / "params.yaml").read_text()
    text = set_param(text, "max_iter", "30")
    # ~900 rows a frame: the window of 4 holds ~3,400 labelled rows.
    text = text.replace("  min_labels:\n    rows: 5000", "  min_labels:\n    rows: 1000")
    (root / "params.yaml").write_text(text)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "CRISPML_GIT_COMMIT")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["CRISPML_GIT_COMMIT"] = "0" * 40
    # Everything in-process below points MLflow at this project's registry; the block
    # puts MLflow's process-wide URIs (and the variables it exports) back afterwards.
    with tracking.pointed_at(f"sqlite:///{root / 'mlflow.db'}"):
        settings = load_settings(root)
        assert settings.continuous_training.min_labels.rows == 1000
        ingest.run(settings)
        prepare.run(settings)
        prepared = ct._prepared_frames(settings)
        contract = settings.contract
        history = ct.labelled_rows(prepared, None, settings.frames.train, "transaction_id", "Class")
        split = settings.curate.split
        first = ct.Window(tuple(split.train), tuple(split.valid), tuple(split.test), 0, 0)
        champion = ct.fit_candidate(history, first, settings)
        client = tracking.configure(settings)
        verdict = {"verdict": "passed", "reason": "first"}
        version = ct.register_candidate(
            client, settings, champion, verdict, "initial", tracking.ensure_experiment(settings)
        )
        with registry.history_store(settings) as history:
            registry.move_alias(
                client, history, settings.registration.model_name, "dev", version, reason="test"
            )
        store = ScoreStore(settings.store_url)
        store.migrate()
        name = settings.registration.model_name
        for frame in (7, 8, 9, 10):
            data = prepared[frame]
            scored = score_rows(
                champion.model, data, settings.model_inputs, contract.id_column, champion.threshold
            )
            lineage = {
                "frame": frame,
                "threshold": champion.threshold,
                "model_name": name,
                "model_version": version,
                "run_id": "test",
                "git_commit": "0" * 40,
                "environment": "dev",
                "channel": "batch",
                "source": "test",
                "scored_at": utcnow(),
            }
            store.insert_scores(
                [
                    {
                        **lineage,
                        **r,
                        "score_id": new_score_id(),
                    }
                    for r in scored.to_dict("records")
                ]
            )
            truth = clean_truth(data, contract.id_column, contract.target)
            store.upsert_labels(
                {
                    "environment": "dev",
                    "record_id": r,
                    "label": int(v),
                    "source": "test",
                    "labeled_at": utcnow(),
                }
                for r, v in zip(truth["record_id"], truth["label"], strict=True)
            )
        store.dispose()
        yield root, settings
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def write_verify(root, passed: bool, drift_share: float = 0.0) -> None:
    from pipeline.io import write_json

    reasons = [] if passed else ["realised PR-AUC 0.2 is below 0.45"]
    write_json(
        root / "reports" / "verify.json",
        {"gate": {"passed": passed, "reasons": reasons}, "overall": {"drift_share": drift_share}},
    )


def test_ci_run_does_not_retrain_a_young_model_that_passes_verify(ci_project, capsys):
    from pipeline import continuous_training as ct
    from pipeline import tracking

    root, settings = ci_project
    write_verify(root, passed=True, drift_share=0.02)
    result = ct.run(settings)
    assert result["retrained"] is False and result["trigger"] is None
    assert result["message"].startswith("NOT RETRAINED: verify gate passed")
    assert "drift share 0.020" in result["message"]
    assert "continuous training: NOT RETRAINED" in capsys.readouterr().err
    client = tracking.configure(settings)
    versions = client.search_model_versions(f"name='{settings.registration.model_name}'")
    assert len(versions) == 1
    assert (root / "reports" / "continuous-training.json").is_file()
    # The day's drift and quality snapshots are in the environment's monitoring project.
    from pipeline import monitoring

    rows = monitoring.series(monitoring.open_project(settings))
    assert {"drift", "quality"} <= {tag for row in rows for tag in row["tags"]}
    assert any("pr_auc" in row for row in rows)


def test_ci_run_retrains_on_the_window_of_store_labels_when_verify_fails(ci_project, capsys):
    from click.testing import CliRunner

    from pipeline import registry, tracking
    from pipeline.continuous_training import continuous_training_command
    from pipeline.io import read_json

    root, settings = ci_project
    write_verify(root, passed=False, drift_share=0.3)
    outcome = CliRunner().invoke(continuous_training_command, ["--root", str(root)])
    result = read_json(root / "reports" / "continuous-training.json")
    assert result["retrained"] is True and result["trigger"] == "verify_failed"
    # Frames 7-10 have labels in the store: the window ends at frame 10.
    assert result["window"]["test"][-1] == 10
    assert max(result["window"]["train"]) < min(result["window"]["test"])
    assert result["verdict"]["verdict"] in ("passed", "failed", "insufficient_evidence")
    client = tracking.configure(settings)
    name = settings.registration.model_name
    version = client.get_model_version(name, result["candidate_version"])
    tags = version.tags
    assert tags["ct.trigger"] == "verify_failed"
    assert tags["ct.window.test"] == ",".join(map(str, result["window"]["test"]))
    assert int(tags["ct.train.rows"]) > 0 and int(tags["ct.test.positives"]) > 0
    assert tags["git_commit"] == "0" * 40 and tags["environment"] == "dev"
    assert float(tags["threshold"]) >= 0 and 0 < float(tags["pr_auc"]) <= 1
    holder = registry.alias_holder(client, name, "dev")
    if result["promoted"]:
        assert outcome.exit_code == 0, outcome.output
        assert str(holder.version) == result["candidate_version"]
        with registry.history_store(settings) as store:
            history = registry.alias_history(client, store, name, "dev")
        assert history[-1]["reason"].startswith("continuous training (verify_failed)")
    else:
        assert outcome.exit_code == 5
        assert str(holder.version) == result["serving_version"]
    assert "monitoring_error" not in result["extra"], result["extra"]
    assert result["extra"]["monitoring"] == "frame 10: 2 snapshot(s) added"


def test_ci_run_refuses_a_window_without_enough_labels(ci_project):
    from pipeline import continuous_training as ct

    root, settings = ci_project
    write_verify(root, passed=False)
    strict = settings.model_copy(
        update={
            "continuous_training": settings.continuous_training.model_copy(
                update={
                    "min_labels": settings.continuous_training.min_labels.model_copy(
                        update={"positives": 100_000}
                    )
                }
            )
        }
    )
    result = ct.run(strict)
    assert result["retrained"] is False
    assert "not enough labels" in result["message"] and "100000 positives" in result["message"]
