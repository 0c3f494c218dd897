"""Batch scoring on Spark (`score.engine: spark`): the pandas engine's rows, past one machine.

Why it is built the way it is:

* The model runs inside `mlflow.pyfunc.spark_udf` with `env_manager="local"`: executors
  use the Python they run in (the driver's own in local mode, an image with the project
  installed on a cluster), never an environment MLflow would build from the artifact.
  The artifact is the one `pipeline.score` would load (the train output when it is byte
  for byte the serving version, else the registry's), and its MLmodel file passes the
  same skops trust check first: MLflow's loader then trusts no more than ours does.
* Each task stores its own partition, chunk by chunk (at most `score.chunk_rows` rows,
  one transaction each), through the store's bulk path (`ScoreStore.store_batch_frame`).
  Scores never funnel through the driver to be written; only the receipt's four columns
  come back to it.
* Spark runs a task again when an attempt fails (and twice at once under speculation),
  possibly after the first attempt committed. Score ids are therefore drawn inside the
  task, never derived from the record, and the store's unique batch index (environment,
  model, version, record) with ON CONFLICT DO NOTHING keeps the first score stored;
  `store_batch_frame` answers a row it did not add with the id already stored. A retried
  partition adds nothing twice, and the output Spark keeps (one attempt's) names scores
  that exist. Its `added` flags count only what that attempt added: rows a failed attempt
  committed count as already stored, as for a pandas run resumed after a crash.
* Receipts keep the input's row order (the Parquet row index travels with each row), so
  both engines write the same data/scored file but for the random ids.
* pyspark is imported only here, and this module only when the engine is spark: the
  extra `spark` (and Java 17) is needed only by those who use it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.errors import ConfigError
from pipeline.score import (
    batch_lineage,
    decided,
    opened_store,
    serving_model,
    train_output_serves,
    write_frame_outputs,
)

if TYPE_CHECKING:
    from pipeline.registered import Registered, Serving

# What a task hands back per row: the receipt's columns, the input's position (to put
# the receipt back in input order) and whether this attempt added the row.
PARTITION_SCHEMA = (
    "ord long, record_id string, score double, decision long, score_id string, added boolean"
)
# Columns of the Spark job before the store: what `write_partition` reads.
ORD, RECORD, SCORE = "_crispml_ord", "_crispml_record", "_crispml_score"


# --------------------------------------------------------------------------- core


def store_chunk(store: Any, chunk: pd.DataFrame, lineage: dict[str, Any]) -> pd.DataFrame:
    """Store one chunk (ord, record_id, score, decision) once per record; one transaction.

    Returns the chunk with `score_id`, the stored id of each row (a fresh one where this
    call added it, the existing one where the record was stored before, by an earlier
    run or an earlier attempt of the same task), and `added`.
    """
    from pipeline.store import new_batch_score_ids, utcnow

    drawn = new_batch_score_ids(len(chunk))
    receipt = chunk[["record_id", "score", "decision"]].reset_index(drop=True)
    receipt["score_id"] = drawn
    _, stored = store.store_batch_frame(receipt, lineage, utcnow())
    # A drawn id is random and new: the row kept it only if this call stored it.
    added = [s == d for s, d in zip(stored, drawn, strict=True)]
    return pd.DataFrame(
        {
            "ord": chunk["ord"].to_numpy(dtype="int64"),
            "record_id": receipt["record_id"].to_numpy(),
            "score": receipt["score"].to_numpy(dtype="float64"),
            "decision": receipt["decision"].to_numpy(dtype="int64"),
            "score_id": stored,
            "added": added,
        }
    )


def write_partition(
    batches: Iterable[pd.DataFrame], store_url: str, lineage: dict[str, Any]
) -> Iterator[pd.DataFrame]:
    """What one Spark task runs: its partition's batches decided and stored, one by one.

    Each batch (ORD, RECORD, SCORE columns, at most `score.chunk_rows` rows: the job
    sets Arrow's batch size to it) is one transaction. Safe to run again on the same
    rows, which is what a retried task does.
    """
    from pipeline.store import ScoreStore

    store = ScoreStore(store_url)
    try:
        for batch in batches:
            if batch.empty:
                continue
            rows = decided(batch[RECORD], batch[SCORE], lineage["threshold"])
            rows.insert(0, "ord", batch[ORD].to_numpy(dtype="int64"))
            yield store_chunk(store, rows, lineage)
    finally:
        store.dispose()


def receipt_of(parts: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The frame's receipt in input order, and how many rows the job added."""
    ordered = parts.sort_values("ord", kind="stable").reset_index(drop=True)
    receipt = pd.DataFrame(
        {
            "record_id": ordered["record_id"].astype(str).to_numpy(dtype=object),
            "score": ordered["score"].to_numpy(dtype="float64"),
            "decision": ordered["decision"].to_numpy(dtype="int64"),
            "score_id": ordered["score_id"].astype(str).to_numpy(dtype=object),
        }
    )
    return receipt, int(ordered["added"].sum())


def require_reachable_store(master: str, store_url: str) -> None:
    """Refuse a SQLite store for a Spark cluster: its tasks could not reach the file.

    In local mode the tasks run on this machine and share the file (SQLite serialises
    their transactions); on a cluster each executor opens the store itself, so it must
    be a server every executor can reach (PostgreSQL).
    """
    import sqlalchemy as sa

    if master.startswith("local"):
        return
    if sa.make_url(store_url).get_backend_name() == "sqlite":
        raise ConfigError(
            f"score.spark_master {master!r} runs tasks on other machines, which cannot "
            "write a SQLite file store: set CRISPML_STORE_URL (or the environment's "
            "store.url) to a PostgreSQL store, or use a local[...] master"
        )


# --------------------------------------------------------------------------- Spark glue


def require_spark() -> None:
    """Stop with what to install, before anything slow, when Spark cannot run here."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(
            "score.engine is 'spark' but pyspark is not installed: pip install -e '.[spark]'"
        ) from None
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        raise ConfigError(
            "score.engine is 'spark' but no Java runtime was found (no java on PATH, no "
            "JAVA_HOME): install Java 17, e.g. apt-get install openjdk-17-jre-headless"
        )


@contextmanager
def spark_session(master: str) -> Iterator[Any]:
    """A session at `master`; one already active in this process is used and left running.

    A session is a JVM that takes seconds to start: whoever started one (a test, a
    notebook) keeps it, and only a session started here is stopped here.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    builder = (
        SparkSession.builder.master(master)
        .appName("crispml-score")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master.startswith("local"):
        # Workers are this interpreter (the venv DVC may not have on PATH), and the driver
        # listens on loopback only.
        builder = (
            builder.config("spark.pyspark.python", sys.executable)
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield spark
    finally:
        spark.stop()


def model_path(
    settings, registered: Registered, serving: Serving, workdir: Path
) -> tuple[Path, str]:
    """The serving version's model folder, and where it came from, checked for spark_udf.

    As `pipeline.score.load_serving_model` decides: the train output when it is the
    serving artifact, else the registry's copy, downloaded here so that the folder
    checked is the folder spark_udf loads.
    """
    from pipeline.layout import Layout
    from pipeline.saved_model import sklearn_flavor

    local = Layout(settings.root).model
    if train_output_serves(registered, serving, local):
        path, source = local, "train output"
    else:
        import mlflow.artifacts

        uri = f"models:/{registered.model_name}/{serving.version}"
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(workdir)))
        source = "registry"
    sklearn_flavor(path)  # skops within our trust list, or refused
    return path, source


def score_frame(
    spark: Any, predict: Any, settings, layout, lineage: dict[str, Any]
) -> tuple[pd.DataFrame, int]:
    """One frame through Spark: read, score with the UDF, store per task, collect receipt."""
    from pyspark.sql import functions as F

    path = layout.frame_file(layout.prepared, lineage["frame"])
    inputs = settings.model_inputs
    frame = spark.read.parquet(str(path)).select(
        F.col("_metadata.row_index").alias(ORD),
        F.col(settings.contract.id_column).alias(RECORD),
        *[F.col(c) for c in inputs],
    )
    # A frame is one Parquet file, often one row group: one partition unless spread.
    # Round-robin repartitioning sorts first, so a retried task gets its own rows again.
    partitions = settings.score.spark_partitions or spark.sparkContext.defaultParallelism
    # The model gets its columns by name (a struct), as the pandas engine hands them over;
    # element 1 of predict_proba is the positive class.
    scored = frame.repartition(partitions).select(
        ORD, RECORD, predict(F.struct(*inputs)).getItem(1).alias(SCORE)
    )
    store_url = settings.store_url
    frame_lineage = dict(lineage)

    def run_task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return write_partition(batches, store_url, frame_lineage)

    parts = scored.mapInPandas(run_task, PARTITION_SCHEMA).toPandas()
    return receipt_of(parts)


def run_frames(settings, frames: Sequence[int]) -> list[dict]:
    """`pipeline.score.run_frames` on Spark: one session and one model load for all frames."""
    require_reachable_store(settings.score.spark_master, settings.store_url)
    require_spark()
    from pipeline import tracking
    from pipeline.layout import Layout
    from pipeline.registered import Registered

    layout = Layout(settings.root)
    registered = Registered.load(layout.registered)
    serving = serving_model(registered)
    lineage = batch_lineage(settings, registered, serving)
    tracking.configure(settings)
    import mlflow.pyfunc

    with (
        tempfile.TemporaryDirectory(prefix="crispml-spark-model-") as workdir,
        opened_store(settings),
        spark_session(settings.score.spark_master) as spark,
    ):
        path, model_from = model_path(settings, registered, serving, Path(workdir))
        # Each task's Arrow batches are its chunks: one transaction per chunk_rows rows.
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", settings.score.chunk_rows)
        predict = mlflow.pyfunc.spark_udf(
            spark, str(path), result_type="array<double>", env_manager="local"
        )
        summaries = []
        for frame in frames:
            lineage["frame"] = frame
            receipt, inserted = score_frame(spark, predict, settings, layout, lineage)
            summaries.append(write_frame_outputs(layout, receipt, inserted, lineage, model_from))
        return summaries
