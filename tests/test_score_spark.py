"""`score.engine: spark`: the store ends up holding what the pandas engine stores.

Both engines score the same prepared frames with the same real model (the project's
features and algorithm, saved the way train saves it), one after the other into the
same store and environment, and every stored column but the random id and the clock
must match, on SQLite and on PostgreSQL. A partition written twice, as a retried Spark
task writes it, must add nothing and name the scores already stored.

Spark runs on one local session shared by the whole test session (a JVM takes seconds
to start); the tests skip, saying why, without pyspark or Java.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import copy_project, postgres_url, set_param

FRAMES = (7, 8)
FRAME_ROWS = 1500
VERSION = "3"
THRESHOLD = 0.5


def _spark_missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install -e '.[spark]')"
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        return "no Java runtime (java on PATH or JAVA_HOME) for Spark"
    return None


needs_spark = pytest.mark.skipif(_spark_missing() is not None, reason=str(_spark_missing()))
STORES = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(
                postgres_url() is None, reason="CRISPML_TEST_DATABASE_URL is not set"
            ),
        ],
    ),
]


@pytest.fixture(scope="session")
def spark() -> Any:
    """One local Spark session for every test here, started the way the stage starts one."""
    from pipeline.score_spark import spark_session

    with spark_session("local[2]") as session:
        yield session


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model saved as train saves it, and the prepared frames it scores.

    Fitted once per session on generated data with the project's own features and
    algorithm, so that both engines score a real model (and Spark loads a real artifact).
    """
    from pipeline.config import Generator, load_settings
    from pipeline.features import plan_features
    from pipeline.generator import generate
    from pipeline.train import fit_model, save_model

    root = copy_project(tmp_path_factory.mktemp("spark-model") / "project")
    settings = load_settings(root)
    rows = 3000 + FRAME_ROWS * len(FRAMES)
    data = generate(Generator(rows=rows, fraud_rate=0.05, seed=5), settings.frames.count)
    data = data.sample(frac=1.0, random_state=0).reset_index(drop=True)
    train = data.iloc[:3000]
    model = fit_model(train, plan_features(settings, train), settings)
    folder = root / "model"
    save_model(model, train, settings, folder)
    columns = [settings.contract.id_column, *settings.model_inputs]
    frames = {
        frame: data.iloc[3000 + i * FRAME_ROWS : 3000 + (i + 1) * FRAME_ROWS][columns]
        for i, frame in enumerate(FRAMES)
    }
    return {"model": folder, "frames": frames}


@pytest.fixture
def scoring(settings: Any, trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The project copy with the trained model serving (as train output), frames prepared.

    An environment name of its own: PostgreSQL is shared, and its rows are deleted after.
    """
    from pipeline.layout import Layout
    from pipeline.registered import Registered
    from pipeline.saved_model import artifact_hash

    layout = Layout(settings.root)
    shutil.copytree(trained["model"], layout.model)
    for frame, data in trained["frames"].items():
        path = layout.frame_file(layout.prepared, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        data.to_parquet(path, index=False)
    Registered.parse(
        {
            "model_name": settings.registration.model_name,
            "alias": settings.alias,
            "candidate_version": VERSION,
            "artifact_sha256": artifact_hash(layout.model),
            "gate": {"passed": True, "reasons": []},
            "serving": {"version": VERSION, "run_id": "run", "threshold": THRESHOLD},
        }
    ).write(layout.registered)
    # The registry is never needed: the train output is the serving artifact.
    monkeypatch.setattr("pipeline.saved_model.load_model", _no_registry)
    # Partitions and chunks both smaller than a frame: several tasks, several
    # transactions each.
    score = settings.score.model_copy(update={"chunk_rows": 400, "spark_partitions": 3})
    return settings.model_copy(update={"score": score, "env": f"spark-{uuid.uuid4().hex[:10]}"})


def _no_registry(uri: str) -> Any:
    raise AssertionError(f"the registry was asked for {uri}")


def _use_store(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "postgresql":
        monkeypatch.setenv("CRISPML_STORE_URL", postgres_url())


def _run(settings: Any, engine: str) -> list[dict]:
    from pipeline import score, tracking

    chosen = settings.model_copy(
        update={"score": settings.score.model_copy(update={"engine": engine})}
    )
    with tracking.pointed_at(chosen.tracking_uri):
        return score.run_frames(chosen, list(FRAMES))


def _stored(settings: Any) -> pd.DataFrame:
    """Every stored score of the test's environment, every column, in record order."""
    import sqlalchemy as sa

    from pipeline.store import ScoreStore
    from pipeline.store.schema import scores

    store = ScoreStore(settings.store_url)
    try:
        query = sa.select(scores).where(scores.c.environment == settings.env)
        with store.engine.connect() as connection:
            rows = pd.read_sql_query(query, connection)
    finally:
        store.dispose()
    return rows.sort_values("record_id").reset_index(drop=True)


def _forget(settings: Any) -> None:
    import sqlalchemy as sa

    from pipeline.store import ScoreStore
    from pipeline.store.schema import scores

    store = ScoreStore(settings.store_url)
    try:
        with store.engine.begin() as connection:
            connection.execute(sa.delete(scores).where(scores.c.environment == settings.env))
    finally:
        store.dispose()


def _receipts(settings: Any) -> dict[int, pd.DataFrame]:
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    return {n: pd.read_parquet(layout.frame_file(layout.scored, n)) for n in FRAMES}


@pytest.mark.slow
@needs_spark
@pytest.mark.parametrize("kind", STORES)
def test_spark_stores_exactly_what_pandas_stores(
    kind: str, scoring: Any, spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_store(kind, monkeypatch)
    try:
        by_pandas = _run(scoring, "pandas")
        stored_by_pandas = _stored(scoring)
        receipts_by_pandas = _receipts(scoring)
        _forget(scoring)

        by_spark = _run(scoring, "spark")
        stored_by_spark = _stored(scoring)
        receipts_by_spark = _receipts(scoring)

        total = FRAME_ROWS * len(FRAMES)
        assert len(stored_by_spark) == total
        assert stored_by_spark["decision"].sum() > 0  # the threshold splits the rows
        volatile = ["score_id", "scored_at"]
        pd.testing.assert_frame_equal(
            stored_by_spark.drop(columns=volatile),
            stored_by_pandas.drop(columns=volatile),
            check_exact=True,
        )
        for frame in FRAMES:
            spark_receipt, pandas_receipt = receipts_by_spark[frame], receipts_by_pandas[frame]
            # Same columns, types and row order; only the random ids differ.
            pd.testing.assert_frame_equal(
                spark_receipt.drop(columns="score_id"),
                pandas_receipt.drop(columns="score_id"),
                check_exact=True,
            )
            # The receipt names the scores that are in the store.
            ids = dict(zip(stored_by_spark["record_id"], stored_by_spark["score_id"], strict=True))
            assert list(spark_receipt["score_id"]) == [ids[r] for r in spark_receipt["record_id"]]
        for spark_summary, pandas_summary in zip(by_spark, by_pandas, strict=True):
            assert spark_summary.keys() == pandas_summary.keys()
            assert spark_summary["model_from"] == "train output"
            assert {k: v for k, v in spark_summary.items() if k != "scored_at"} == {
                k: v for k, v in pandas_summary.items() if k != "scored_at"
            }

        # A re-run through Spark (every task a repeat of one already done) adds nothing
        # and names the same stored scores.
        again = _run(scoring, "spark")
        assert [(s["inserted"], s["already_stored"]) for s in again] == [(0, FRAME_ROWS)] * 2
        for frame, receipt in _receipts(scoring).items():
            assert list(receipt["score_id"]) == list(receipts_by_spark[frame]["score_id"])
        assert len(_stored(scoring)) == total
    finally:
        _forget(scoring)


def _batches(sizes: list[int]) -> list[pd.DataFrame]:
    """A partition's input as a Spark task receives it, in Arrow batches."""
    from pipeline.score_spark import ORD, RECORD, SCORE

    rng = np.random.default_rng(7)
    out, start = [], 0
    for size in sizes:
        ords = np.arange(start, start + size)
        out.append(
            pd.DataFrame({ORD: ords, RECORD: [f"tx-{i}" for i in ords], SCORE: rng.random(size)})
        )
        start += size
    return out


@pytest.mark.parametrize("kind", STORES)
def test_a_retried_partition_adds_nothing_and_names_the_stored_scores(
    kind: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 commits its first chunk and dies; attempt 2 runs the whole partition."""
    from pipeline.score_spark import SCORE, write_partition
    from pipeline.store import ScoreStore

    _use_store(kind, monkeypatch)
    settings = settings.model_copy(update={"env": f"retry-{uuid.uuid4().hex[:10]}"})
    url = settings.store_url
    store = ScoreStore(url)
    store.migrate()
    store.dispose()
    lineage = {
        "frame": 7,
        "threshold": THRESHOLD,
        "model_name": settings.registration.model_name,
        "model_version": VERSION,
        "run_id": "run",
        "git_commit": "0" * 40,
        "environment": settings.env,
        "channel": "batch",
        "source": "test",
    }
    batches = _batches([300, 200])
    try:
        died = pd.concat(write_partition(batches[:1], url, lineage))
        assert died["added"].all()

        retried = pd.concat(write_partition(batches, url, lineage), ignore_index=True)
        first, second = retried.iloc[:300], retried.iloc[300:]
        assert not first["added"].any() and second["added"].all()
        assert list(first["score_id"]) == list(died["score_id"])

        repeated = pd.concat(write_partition(batches, url, lineage), ignore_index=True)
        assert not repeated["added"].any()
        assert list(repeated["score_id"]) == list(retried["score_id"])

        stored = _stored(settings)
        assert len(stored) == 500
        by_record = dict(zip(stored["record_id"], stored["score_id"], strict=True))
        assert list(retried["score_id"]) == [by_record[r] for r in retried["record_id"]]
        scores = pd.concat(batches)[SCORE].to_numpy()
        assert np.array_equal(retried["score"].to_numpy(), scores)
        assert list(retried["decision"]) == [int(s >= THRESHOLD) for s in scores]
    finally:
        _forget(settings)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("engine", "dask", ["score.engine", "'pandas' or 'spark'", "'dask'"]),
        ("spark_master", "localhost", ["score.spark_master", "Spark master URL", "'localhost'"]),
    ],
)
def test_an_unknown_engine_or_master_is_refused_by_name(
    tmp_path: Path, key: str, value: str, named: list[str]
) -> None:
    from pipeline.config import load_settings
    from pipeline.errors import ConfigError

    root = copy_project(tmp_path / "project")
    params = root / "params.yaml"
    params.write_text(set_param(params.read_text(), key, value))
    with pytest.raises(ConfigError) as refused:
        load_settings(root)
    for part in named:
        assert part in str(refused.value)


def test_a_cluster_master_with_a_sqlite_store_is_refused(settings: Any) -> None:
    """Executors on other machines could not reach the file: stop before Spark starts."""
    from pipeline.errors import ConfigError
    from pipeline.score_spark import require_reachable_store

    with pytest.raises(ConfigError, match=r"score\.spark_master 'spark://head:7077'"):
        require_reachable_store("spark://head:7077", settings.store_url)
    require_reachable_store("local[*]", settings.store_url)
    require_reachable_store("yarn", "postgresql+psycopg://crispml@db:5432/scores")


def test_the_pandas_engine_never_imports_pyspark() -> None:
    code = (
        "import sys, pipeline.score, pipeline.score_spark, pipeline.cli\n"
        "assert 'pyspark' not in sys.modules, 'pyspark imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
