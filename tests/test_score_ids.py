"""`crispml score`: random score ids, a re-run that stores nothing twice, honest receipts.

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
