"""The score store on SQLite always, and on a real PostgreSQL when one is named."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.errors import ConfigError
from pipeline.store import (
    MIGRATIONS,
    ScoreStore,
    new_score_id,
    shadow_score_id,
    utcnow,
)
from tests.conftest import postgres_url

HEAD = "0004"


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


@dataclass(frozen=True)
class StoreTarget:
    """Where a test's store lives: enough for another process to open the same one."""

    url: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def open(self) -> ScoreStore:
        return ScoreStore(self.url, **self.engine_kwargs)


@pytest.fixture(params=list(_stores()))
def store_target(request, tmp_path: Path) -> Iterator[StoreTarget]:
    if request.param == "sqlite":
        yield StoreTarget(f"sqlite:///{tmp_path / 'scores.db'}")
        return
    # A schema of its own per test, so runs never see each other's rows.
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield StoreTarget(postgres_url(), {"connect_args": {"options": f"-csearch_path={schema}"}})
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def store(store_target: StoreTarget) -> Iterator[ScoreStore]:
    target = store_target.open()
    target.migrate()
    yield target
    target.dispose()


def _row(record: str, version: str = "1", frame: int = 7, score: float = 0.4) -> dict:
    return {
        "score_id": new_score_id(),
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


def test_schema_is_versioned_and_migrating_twice_is_harmless(store, tmp_path) -> None:
    never = ScoreStore(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    assert never.revision() is None
    never.dispose()
    assert store.migrate() == HEAD
    assert store.revision() == HEAD
    assert store.migrate() == HEAD


def test_the_head_the_store_skips_alembic_at_is_alembics_own_head() -> None:
    """HEAD_REVISION must move with every new migration, or stores would stop at the old one."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pipeline.store import HEAD_REVISION, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION] == [HEAD]


def test_a_store_behind_the_head_is_still_migrated(store) -> None:
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0003'"))
        conn.execute(sa.text("DROP INDEX ux_scores_batch_record"))
    assert store.migrate() == HEAD
    with store.engine.connect() as conn:
        names = {ix["name"] for ix in sa.inspect(conn).get_indexes("scores")}
    assert "ux_scores_batch_record" in names


def test_rescoring_the_same_records_adds_nothing(store) -> None:
    rows = [_row(f"r{i}") for i in range(50)]
    assert store.insert_scores(rows) == 50
    assert store.insert_scores(rows) == 0
    # A re-run draws new random ids for the same records: still nothing added.
    assert store.insert_scores([_row(f"r{i}") for i in range(50)]) == 0
    assert store.count_scores() == 50
    # Another model version is another score of the same record: kept, for the audit.
    assert store.insert_scores([_row("r1", version="2")]) == 1


def test_batch_score_ids_are_random_and_a_rerun_returns_the_stored_ones(store) -> None:
    first = [_row(f"r{i}") for i in range(1200)]  # more than one lookup chunk
    added, ids = store.store_batch_scores(first)
    assert added == 1200 and ids == [row["score_id"] for row in first]
    again = [_row(f"r{i}") for i in range(1300)]
    added, ids = store.store_batch_scores(again)
    assert added == 100 and store.count_scores() == 1300
    assert ids[:1200] == [row["score_id"] for row in first]  # the stored ids, not new ones
    assert ids[1200:] == [row["score_id"] for row in again[1200:]]
    assert store.get_score(ids[5])["record_id"] == "r5"
    # An online score of the same record is another score, never swallowed by the batch.
    online = {**_row("r1"), "channel": "api"}
    assert store.insert_scores([online]) == 1


def test_the_sqlite_durability_level_comes_from_the_url(tmp_path: Path) -> None:
    """NORMAL unless the URL asks for FULL (or EXTRA); the store keeps WAL either way."""

    def pragmas(store: ScoreStore) -> tuple[int, str]:
        with store.engine.connect() as conn:
            level = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()
        store.dispose()
        return level, journal

    default = ScoreStore(f"sqlite:///{tmp_path / 'default.db'}")
    assert default.sqlite_synchronous == "NORMAL"
    assert pragmas(default) == (1, "wal")
    full = ScoreStore(f"sqlite:///{tmp_path / 'sub' / 'full.db'}?synchronous=full")
    assert full.sqlite_synchronous == "FULL"
    assert full.migrate() == HEAD  # the parameter is the store's, never the driver's
    assert pragmas(full) == (2, "wal")
    assert (tmp_path / "sub" / "full.db").is_file()
    with pytest.raises(ConfigError, match="synchronous='OFF' is not one of NORMAL, FULL"):
        ScoreStore(f"sqlite:///{tmp_path / 'off.db'}?synchronous=OFF")


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
    stored = store.get_score(joined.set_index("record_id").loc["a", "score_id"])
    assert stored["label"] == 1 and stored["git_commit"] == "c" * 40 and stored["frame"] == 7
    assert store.get_score("nope") is None


# --------------------------------------------------------------------------- revision 0002


def _alembic(store: ScoreStore, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_upgrading_a_0001_store_keeps_its_rows_as_answered_scores(store) -> None:
    _alembic(store, "downgrade", "0001")
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("scores")}
    assert "shadow" not in columns and "shadow_of" not in columns
    old = {k: v for k, v in _row("old").items()}
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO scores (score_id, record_id, frame, score, decision, threshold, "
                "model_name, model_version, run_id, git_commit, environment, channel, source, "
                "scored_at) VALUES (:score_id, :record_id, :frame, :score, :decision, "
                ":threshold, :model_name, :model_version, :run_id, :git_commit, :environment, "
                ":channel, :source, :scored_at)"
            ),
            old,
        )
    assert store.migrate() == HEAD
    stored = store.get_score(old["score_id"])
    assert stored["shadow"] is False or stored["shadow"] == 0
    assert stored["shadow_of"] is None
    assert len(store.scores_with_labels("dev", labeled_only=False)) == 1


def _online(
    record: str,
    version: str,
    score: float,
    at: datetime,
    *,
    shadow_of: str | None = None,
    env: str = "dev",
) -> dict:
    champion_id = shadow_of
    return {
        "score_id": shadow_score_id(champion_id, version) if shadow_of else new_score_id(),
        "record_id": record,
        "frame": None,
        "score": score,
        "decision": int(score >= 0.5),
        "threshold": 0.5,
        "model_name": "m",
        "model_version": version,
        "run_id": f"run-{version}",
        "git_commit": "c" * 40,
        "environment": env,
        "channel": "api",
        "source": "api:/v1/score#shadow" if shadow_of else "api:/v1/score",
        "scored_at": at,
        "shadow": shadow_of is not None,
        "shadow_of": shadow_of,
    }


def _label(record: str, label: int, at: datetime, env: str = "dev") -> dict:
    return {
        "environment": env,
        "record_id": record,
        "label": label,
        "source": "t",
        "labeled_at": at,
    }


DAY1 = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
DAY2 = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)


@pytest.fixture
def online(store):
    """Champion v1 answered a, b (day 1) and c (day 2); challenger v2 shadowed a and c;
    a batch score of d by v1; labels for a, b and d; and another environment's row."""
    answered = [
        _online("a", "1", 0.9, DAY1),
        _online("b", "1", 0.2, DAY1 + timedelta(minutes=9)),
        _online("c", "1", 0.7, DAY2),
    ]
    shadows = [
        _online("a", "2", 0.4, DAY1, shadow_of=answered[0]["score_id"]),
        _online("c", "2", 0.8, DAY2, shadow_of=answered[2]["score_id"]),
    ]
    batch = {**_row("d", version="1"), "scored_at": DAY1}
    other = _online("a", "1", 0.9, DAY1, env="qa")
    # One transaction holds answered and shadow rows, as the service's group commit does.
    assert store.insert_scores([*answered, *shadows, other]) == 6
    assert store.insert_scores([batch]) == 1  # a writer that knows nothing of shadows
    store.upsert_labels(
        [
            _label("a", 1, DAY2),
            _label("b", 0, DAY2),
            _label("d", 1, DAY2 + timedelta(hours=1)),
            _label("a", 0, DAY2 + timedelta(hours=2), env="qa"),
        ]
    )
    return store, answered, shadows


def test_shadow_rows_never_clash_and_stay_out_of_answered_reads(online) -> None:
    store, answered, shadows = online
    assert {s["score_id"] for s in shadows}.isdisjoint(a["score_id"] for a in answered)
    assert store.insert_scores(shadows) == 0  # the same shadow stored twice: a no-op
    assert store.count_scores(environment="dev", shadow=True) == 2
    # Verification reads answered scores only unless asked.
    answered_read = store.scores_with_labels("dev", model_name="m", labeled_only=False)
    assert sorted(answered_read["record_id"]) == ["a", "b", "c", "d"]
    assert set(answered_read["model_version"]) == {"1"}
    shadow_read = store.scores_with_labels("dev", labeled_only=False, shadow=True)
    assert sorted(shadow_read["record_id"]) == ["a", "c"]
    assert len(store.scores_with_labels("dev", labeled_only=False, shadow=None)) == 6
    stored = store.get_score(shadows[0]["score_id"])
    assert bool(stored["shadow"]) and stored["shadow_of"] == answered[0]["score_id"]


def test_online_scores_with_labels_one_version_by_day(online) -> None:
    store, _, _ = online
    frame = store.online_scores_with_labels("dev", "m", "1")
    # Online only (the batch score of d is not), labelled only (c has no label yet).
    assert list(frame["record_id"]) == ["a", "b"]
    assert list(frame.columns[:3]) == ["score_id", "record_id", "day"]
    assert {"label", "score", "decision", "shadow", "frame", "scored_at"} <= set(frame.columns)
    assert list(frame["day"]) == [date(2026, 11, 30)] * 2
    assert list(frame["label"]) == [1, 0] and list(frame["shadow"]) == [False, False]
    everything = store.online_scores_with_labels("dev", "m", "1", labeled_only=False)
    assert everything.groupby("day").size().to_dict() == {
        date(2026, 11, 30): 2,
        date(2026, 12, 1): 1,
    }
    # The UTC date of scoring, whatever the hour: 00:30 on 1 December is day 2.
    assert str(everything["scored_at"].dt.tz) == "UTC"
    later = store.online_scores_with_labels(
        "dev", "m", "1", since=datetime(2026, 12, 1, tzinfo=UTC), labeled_only=False
    )
    assert list(later["record_id"]) == ["c"]
    earlier = store.online_scores_with_labels(
        "dev", "m", "1", until=datetime(2026, 12, 1, tzinfo=UTC), labeled_only=False
    )
    assert list(earlier["record_id"]) == ["a", "b"]
    challenger = store.online_scores_with_labels("dev", "m", "2", labeled_only=False)
    assert list(challenger["record_id"]) == ["a", "c"] and challenger["shadow"].all()
    assert list(store.online_scores_with_labels("dev", "m", "2", shadow=False)["record_id"]) == []
    assert store.online_scores_with_labels("dev", "m", "9").empty


def test_shadow_pairs_join_each_shadow_with_its_answer_and_label(online) -> None:
    store, answered, _ = online
    pairs = store.shadow_pairs("dev", "m", champion_version="1", challenger_version="2")
    assert list(pairs["score_id"]) == [answered[0]["score_id"], answered[2]["score_id"]]
    assert list(pairs["champion_score"]) == [0.9, 0.7]
    assert list(pairs["challenger_score"]) == [0.4, 0.8]
    assert list(pairs["champion_decision"]) == [1, 1]
    assert list(pairs["challenger_decision"]) == [0, 1]
    assert pairs["label"].iloc[0] == 1 and pairs["label"].isna().iloc[1]
    labelled = store.shadow_pairs("dev", "m", labeled_only=True)
    assert list(labelled["record_id"]) == ["a"]
    assert store.shadow_pairs("dev", "m", challenger_version="3").empty
    assert store.shadow_pairs("qa", "m").empty


def test_newest_label_of_the_environment_and_of_a_version(online) -> None:
    store, _, _ = online
    assert store.newest_label_at("dev") == DAY2 + timedelta(hours=1)  # d's label
    # Of the records v1 scored online: a and b (d was batch).
    assert store.newest_label_at("dev", model_name="m", model_version="1", channel="api") == DAY2
    assert store.newest_label_at("dev", model_name="m", model_version="2") == DAY2
    assert store.newest_label_at("dev", model_name="m", model_version="9") is None
    assert store.newest_label_at("prod") is None


def _migrate_after(barrier, url: str, schema: str, results) -> None:
    """One replica starting: wait for the others, then migrate the shared empty schema."""
    try:
        store = ScoreStore(url, connect_args={"options": f"-csearch_path={schema}"})
        barrier.wait(timeout=60)
        results.put(store.migrate())
        store.dispose()
    except Exception as error:  # reported to the test, which names it
        results.put(f"{type(error).__name__}: {error}".splitlines()[0])


@pytest.mark.postgres
@pytest.mark.skipif(
    postgres_url() is None,
    reason="set CRISPML_TEST_DATABASE_URL to a PostgreSQL URL to run (.ci/run does)",
)
def test_three_replicas_migrating_one_empty_schema_at_once_all_start() -> None:
    """Every pod migrates at start-up; three starting together must not crash one."""
    import multiprocessing as mp

    context = mp.get_context("spawn")
    admin = sa.create_engine(postgres_url())
    try:
        for _ in range(3):  # the race lost 1 of 3 trials before the lock
            schema = f"t_{uuid.uuid4().hex[:10]}"
            with admin.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            try:
                barrier, results = context.Barrier(3), context.Queue()
                replicas = [
                    context.Process(
                        target=_migrate_after, args=(barrier, postgres_url(), schema, results)
                    )
                    for _ in range(3)
                ]
                for replica in replicas:
                    replica.start()
                outcomes = [results.get(timeout=120) for _ in replicas]
                for replica in replicas:
                    replica.join(timeout=60)
                head = outcomes[0]
                assert len(set(outcomes)) == 1 and head.startswith("0"), outcomes
            finally:
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()
