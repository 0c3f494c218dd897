"""`crispml score`: random score ids, a re-run that stores nothing twice, honest receipts,
the same rows whatever the chunking, and the train output loaded only when it is the
serving version's artifact.

A score id used to be a hash of (environment, model, version, record id): anyone knowing
a transaction id (and the model version, which answers print) could compute its score
id. The stage runs here for real on one frame, against the project's store; only the
model is a stand-in, so that no training is needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

ROWS = 240
VERSION = "3"


class _Model:
    """Scores that spread over (0, 1), whatever the inputs."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        positive = np.linspace(0.01, 0.99, len(frame))
        return np.column_stack([1 - positive, positive])


class _RowModel:
    """A score per row from the row alone, as a real model's is: chunking cannot move it."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        positive = frame.iloc[:, 0].to_numpy(dtype="float64")
        return np.column_stack([1 - positive, positive])


@pytest.fixture
def scoring(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Frame 7 prepared, version 3 serving (by register's receipt), chunks of 100 rows."""
    from pipeline.layout import Layout
    from pipeline.registered import Registered

    layout = Layout(settings.root)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {column: rng.random(ROWS) for column in settings.model_inputs}
        | {settings.contract.id_column: [f"tx-{i}" for i in range(ROWS)]}
    )
    path = layout.frame_file(layout.prepared, 7)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    Registered.parse(
        {
            "model_name": settings.registration.model_name,
            "alias": settings.alias,
            "candidate_version": VERSION,
            "gate": {"passed": True, "reasons": []},
            "serving": {"version": VERSION, "run_id": "run", "threshold": 0.5},
        }
    ).write(layout.registered)
    monkeypatch.setattr("pipeline.saved_model.load_model", lambda uri: _Model())
    return settings.model_copy(
        update={"score": settings.score.model_copy(update={"chunk_rows": 100})}
    )


def _score(settings: Any) -> tuple[dict, pd.DataFrame]:
    from pipeline import score, tracking
    from pipeline.layout import Layout

    with tracking.pointed_at(settings.tracking_uri):
        summary = score.run(settings, 7)
    layout = Layout(settings.root)
    return summary, pd.read_parquet(layout.frame_file(layout.scored, 7))


def test_score_ids_are_random_and_a_rerun_keeps_the_stored_ones(
    scoring: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.store import ScoreStore

    settings = scoring
    first, receipt = _score(settings)
    assert (first["inserted"], first["already_stored"]) == (ROWS, 0)
    ids = list(receipt["score_id"])
    assert len(set(ids)) == ROWS and all(len(i) == 32 for i in ids)

    # Not the old hash of the record: a known transaction id gives nothing away.
    name, env = settings.registration.model_name, settings.env
    derivable = {
        hashlib.sha256(f"{env}|{name}|{VERSION}|{r}|batch".encode()).hexdigest()[:32]
        for r in receipt["record_id"]
    }
    assert derivable.isdisjoint(ids)

    # A re-run stores nothing, and its receipt names the scores that are in the store.
    again, second = _score(settings)
    assert (again["inserted"], again["already_stored"]) == (0, ROWS)
    assert list(second["score_id"]) == ids
    store = ScoreStore(settings.store_url)
    try:
        assert store.count_scores(environment=env) == ROWS
        stored = store.get_score(ids[123])
        assert (stored["record_id"], stored["model_version"]) == ("tx-123", VERSION)
    finally:
        store.dispose()

    # The same records scored into another store: other ids, nothing in common.
    monkeypatch.setenv("CRISPML_STORE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    _, elsewhere = _score(settings)
    assert set(elsewhere["score_id"]).isdisjoint(ids)


def _stored(settings: Any) -> pd.DataFrame:
    """Every stored batch score but the random id and the clock, in record order."""
    from pipeline.store import ScoreStore

    store = ScoreStore(settings.store_url)
    try:
        rows = store.scores_with_labels(
            settings.env,
            model_name=settings.registration.model_name,
            model_version=VERSION,
            frames=[7],
            labeled_only=False,
        )
    finally:
        store.dispose()
    return (
        rows.drop(columns=["score_id", "scored_at"]).sort_values("record_id").reset_index(drop=True)
    )


def test_chunked_scoring_stores_the_rows_unchunked_scoring_stores(
    scoring: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks bound memory; they must not change a stored value or the receipt's order."""
    monkeypatch.setattr("pipeline.saved_model.load_model", lambda uri: _RowModel())
    chunked = scoring  # chunks of 100: three transactions for 240 rows
    summary, receipt = _score(chunked)
    assert summary["inserted"] == ROWS
    in_chunks = _stored(chunked)

    monkeypatch.setenv("CRISPML_STORE_URL", f"sqlite:///{tmp_path / 'whole.db'}")
    whole = chunked.model_copy(
        update={"score": chunked.score.model_copy(update={"chunk_rows": 10 * ROWS})}
    )
    summary_whole, receipt_whole = _score(whole)
    assert summary_whole["inserted"] == ROWS
    at_once = _stored(whole)

    assert len(in_chunks) == ROWS
    pd.testing.assert_frame_equal(in_chunks, at_once)
    pd.testing.assert_frame_equal(
        receipt.drop(columns=["score_id"]), receipt_whole.drop(columns=["score_id"])
    )
    for key in ("rows", "inserted", "flagged", "flag_rate", "mean_score"):
        assert summary[key] == summary_whole[key]


def _save_train_output(settings: Any) -> str:
    """A real, skops-saved model where train writes it; returns register's fingerprint."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    from pipeline.layout import Layout
    from pipeline.saved_model import artifact_hash, save_options

    layout = Layout(settings.root)
    rng = np.random.default_rng(1)
    inputs = pd.DataFrame({c: rng.random(200) for c in settings.model_inputs})
    model = LogisticRegression().fit(inputs, rng.integers(0, 2, 200))
    mlflow.sklearn.save_model(model, str(layout.model), **save_options(model))
    return artifact_hash(layout.model)


def _receipt_with_fingerprint(settings: Any, fingerprint: str) -> None:
    from pipeline.layout import Layout
    from pipeline.registered import Registered

    layout = Layout(settings.root)
    receipt = Registered.load(layout.registered).as_dict()
    Registered.parse({**receipt, "artifact_sha256": fingerprint}).write(layout.registered)


def test_the_train_output_scores_when_it_is_the_serving_artifact(
    scoring: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No MLflow download when the local model is byte for byte the serving version."""
    fingerprint = _save_train_output(scoring)
    _receipt_with_fingerprint(scoring, fingerprint)

    def no_registry(uri: str) -> Any:
        raise AssertionError(f"the registry was asked for {uri}")

    monkeypatch.setattr("pipeline.saved_model.load_model", no_registry)
    summary, receipt = _score(scoring)
    assert summary["model_from"] == "train output"
    # The logistic regression's scores, not the registry stand-in's.
    assert not np.allclose(receipt["score"], _row_model_scores(scoring))


def _row_model_scores(settings: Any) -> np.ndarray:
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    prepared = pd.read_parquet(layout.frame_file(layout.prepared, 7))
    return _RowModel().predict_proba(prepared[settings.model_inputs])[:, 1]


@pytest.mark.parametrize("change", ["another artifact", "another version serves"])
def test_the_registry_scores_when_the_train_output_is_not_the_serving_artifact(
    scoring: Any, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.layout import Layout
    from pipeline.registered import Registered

    monkeypatch.setattr("pipeline.saved_model.load_model", lambda uri: _RowModel())
    fingerprint = _save_train_output(scoring)
    if change == "another artifact":
        _receipt_with_fingerprint(scoring, "0" * 64)
    else:
        # The gate kept an older champion: the new train output is not what serves.
        _receipt_with_fingerprint(scoring, fingerprint)
        layout = Layout(scoring.root)
        receipt = Registered.load(layout.registered).as_dict()
        receipt["candidate_version"] = str(int(VERSION) + 1)
        Registered.parse(receipt).write(layout.registered)
    summary, receipt = _score(scoring)
    assert summary["model_from"] == "registry"
    assert np.allclose(receipt["score"], _row_model_scores(scoring))


def test_one_process_scores_several_frames_as_separate_stages_would(
    scoring: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crispml score` (all frames at once) and one run per frame give the same receipts."""
    from pipeline import score, tracking
    from pipeline.layout import Layout

    layout = Layout(scoring.root)
    seven = pd.read_parquet(layout.frame_file(layout.prepared, 7))
    eight = seven.assign(**{scoring.contract.id_column: [f"tx8-{i}" for i in range(ROWS)]})
    eight.to_parquet(layout.frame_file(layout.prepared, 8))

    def receipts() -> list[pd.DataFrame]:
        return [
            pd.read_parquet(layout.frame_file(layout.scored, n)).drop(columns=["score_id"])
            for n in (7, 8)
        ]

    with tracking.pointed_at(scoring.tracking_uri):
        together = score.run_frames(scoring, [7, 8])
    at_once = receipts()
    monkeypatch.setenv("CRISPML_STORE_URL", f"sqlite:///{tmp_path / 'apart.db'}")
    with tracking.pointed_at(scoring.tracking_uri):
        apart = [score.run(scoring, 7), score.run(scoring, 8)]
    assert [s["frame"] for s in together] == [7, 8]
    for joint, single in zip(together, apart, strict=True):
        assert joint["inserted"] == single["inserted"] == ROWS
    for joint, single in zip(at_once, receipts(), strict=True):
        pd.testing.assert_frame_equal(joint, single)
