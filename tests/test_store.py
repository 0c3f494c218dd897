"""The score store on SQLite always, and on a real PostgreSQL when one is named."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import ScoreStore, batch_score_id, utcnow
from tests.conftest import postgres_url


def _stores():
    yield pytest.param("sqlite", id="sqlite")
    yield pytest.param(
        "postgresql",
        id="postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(
                postgres_url() is None,
                reason="set CRISPML_TEST_DATABASE_URL to a PostgreSQL URL to run (.ci/run does)",
            ),
        ],
    )


@pytest.fixture(params=list(_stores()))
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        target = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
    else:
        # A schema of its own per test, so runs never see each other's rows.
        schema = f"t_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(postgres_url())
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        target = ScoreStore(postgres_url(), connect_args={"options": f"-csearch_path={schema}"})
    target.migrate()
    yield target
    target.dispose()
    if request.param == "postgresql":
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _row(record: str, version: str = "1", frame: int = 7, score: float = 0.4) -> dict:
    return {
        "score_id": batch_score_id("dev", "m", version, record),
        "record_id": record,
        "frame": frame,
        "score": score,
        "decision": int(score >= 0.5),
        "threshold": 0.5,
        "model_name": "m",
        "model_version": version,
        "run_id": "r",
        "git_commit": "c" * 40,
        "environment": "dev",
        "channel": "batch",
        "source": "test",
        "scored_at": utcnow(),
    }


def test_schema_is_versioned_and_migrating_twice_is_harmless(store) -> None:
    assert store.migrate() == "0001"
    assert store.migrate() == "0001"


def test_rescoring_the_same_records_adds_nothing(store) -> None:
    rows = [_row(f"r{i}") for i in range(50)]
    assert store.insert_scores(rows) == 50
    assert store.insert_scores(rows) == 0
    assert store.count_scores() == 50
    # Another model version is another score of the same record: kept, for the audit.
    assert store.insert_scores([_row("r1", version="2")]) == 1


def test_labels_upsert_and_join_with_scores(store) -> None:
    store.insert_scores([_row("a", score=0.9), _row("b", score=0.1), _row("c", frame=8)])
    now = utcnow()
    store.upsert_labels(
        [{"environment": "dev", "record_id": "a", "label": 0, "source": "t", "labeled_at": now}]
    )
    store.upsert_labels(
        [
            {"environment": "dev", "record_id": "a", "label": 1, "source": "t2", "labeled_at": now},
            {"environment": "dev", "record_id": "b", "label": 0, "source": "t2", "labeled_at": now},
        ]
    )
    joined = store.scores_with_labels("dev", model_name="m", model_version="1", frame=7)
    assert dict(zip(joined["record_id"], joined["label"], strict=True)) == {"a": 1, "b": 0}
    everything = store.scores_with_labels("dev", labeled_only=False)
    assert len(everything) == 3
    stored = store.get_score(batch_score_id("dev", "m", "1", "a"))
    assert stored["label"] == 1 and stored["git_commit"] == "c" * 40 and stored["frame"] == 7
    assert store.get_score("nope") is None
