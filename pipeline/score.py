"""Score (CRISP-DM: deployment): batch-score frames and persist every score with lineage.

The model is the version that holds the environment's alias after the gate, pinned by
number, so a score row always names the exact model that produced it. Chunks bound
memory and each chunk is one transaction. Score ids are random (a known transaction id
must not give away its score id); the store keeps one batch score per record, model
version and environment, so a re-run (or a run resumed after a crash) adds nothing
twice, and its receipt names the ids already stored.

One process scores all of `frames.score`, each frame with its own receipt: Python,
scikit-learn and the model are loaded once, not once per frame. `score.engine: spark`
scores the same frames on a Spark session instead (`pipeline.score_spark`), with the
same rows, lineage and receipts; this module only hands over to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipeline.registered import Registered, Serving


def chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def score_rows(
    model: Any,
    data: pd.DataFrame,
    inputs: list[str],
    id_column: str,
    threshold: float,
) -> pd.DataFrame:
    """record_id, score and decision for each row: the pure part of scoring."""
    if data.empty:
        return pd.DataFrame({"record_id": [], "score": [], "decision": []})
    probability = model.predict_proba(data[inputs])[:, 1]
    return decided(data[id_column], probability, threshold)


def decided(record_ids: pd.Series, probability: Any, threshold: float) -> pd.DataFrame:
    """record_id, score and decision from the model's positive-class probabilities.

    Both engines come through here, so a record gets the same id text and decision
    whichever engine scored it.
    """
    probability = np.asarray(probability, dtype="float64")
    return pd.DataFrame(
        {
            "record_id": record_ids.astype(str).to_numpy(),
            "score": probability,
            "decision": (probability >= threshold).astype("int64"),
        }
    )


def serving_model(registered: Registered) -> Serving:
    """The model that may score: the alias holder. None holding it is a clear stop, not a guess."""
    return registered.require_serving()


def train_output_serves(registered: Registered, serving: Serving, model_dir: Path) -> bool:
    """Whether the model train wrote here is, byte for byte, the version that serves.

    Then the stage loads that folder instead of downloading the same bytes from the
    registry, and skips importing MLflow: a second or more per score stage. The check
    is register's own fingerprint (`artifact_sha256`, the version's `artifact.sha256`
    tag), so a model retrained since, or a gate that kept an older champion, falls back
    to the registry. Either way skops loads it with our trust list only.
    """
    from pipeline.saved_model import artifact_hash

    return (
        serving.version == registered.candidate_version
        and registered.artifact_sha256 is not None
        and model_dir.is_dir()
        and artifact_hash(model_dir) == registered.artifact_sha256
    )


def load_serving_model(settings, registered: Registered, serving: Serving) -> tuple[Any, str]:
    """The serving version's model, and where it came from ("train output" or "registry")."""
    from pipeline.layout import Layout
    from pipeline.saved_model import load_local, load_model

    model_dir = Layout(settings.root).model
    if train_output_serves(registered, serving, model_dir):
        return load_local(model_dir), "train output"
    from pipeline import tracking

    tracking.configure(settings)
    return load_model(f"models:/{registered.model_name}/{serving.version}"), "registry"


def run(settings, frame: int) -> dict:
    """Score one frame: data/prepared/frame_<n> -> score store, data/scored/, reports/score/."""
    return run_frames(settings, [frame])[0]


def run_frames(settings, frames: Sequence[int]) -> list[dict]:
    """Score frames in one process, one receipt each: imports and the model load are paid once."""
    if settings.score.engine == "spark":
        from pipeline import score_spark

        return score_spark.run_frames(settings, frames)
    from pipeline.layout import Layout
    from pipeline.registered import Registered
    from pipeline.store.writers import BatchWriters

    layout = Layout(settings.root)
    registered = Registered.load(layout.registered)
    serving = serving_model(registered)
    model, model_from = load_serving_model(settings, registered, serving)
    lineage = batch_lineage(settings, registered, serving)
    with opened_store(settings) as store, BatchWriters(store) as writers:
        # A frame's receipt is written once its every chunk is stored; meanwhile the
        # next frame is scored, so the database and the model work side by side.
        pending: deque[ScoredFrame] = deque()
        summaries = []
        for frame in frames:
            frame_lineage = {**lineage, "frame": frame}
            pending.append(_score_frame(settings, layout, model, writers, frame_lineage))
            while pending and pending[0].stored():
                summaries.append(pending.popleft().write_outputs(layout, model_from))
        while pending:
            summaries.append(pending.popleft().write_outputs(layout, model_from))
        return summaries


def batch_lineage(settings, registered: Registered, serving: Serving) -> dict[str, Any]:
    """What every batch score of this run carries besides its row (frame set per frame)."""
    from pipeline.sources import describe
    from pipeline.tracking import git_commit

    return {
        "threshold": serving.threshold,
        "model_name": registered.model_name,
        "model_version": serving.version,
        "run_id": serving.run_id,
        "git_commit": git_commit(settings.root),
        "environment": settings.env,
        "channel": "batch",
        "source": describe(settings.environment.data.source, settings)[:300],
    }


@contextmanager
def opened_store(settings) -> Iterator[Any]:
    """The environment's store at the newest schema, refused while it holds raw ids."""
    from pipeline.store import ScoreStore
    from pipeline.store.pseudonymise import require_pseudonymised

    store = ScoreStore(settings.store_url)
    try:
        store.migrate()
        require_pseudonymised(store, settings.env, settings.environment.privacy)
        yield store
    finally:
        store.dispose()


@dataclass
class ScoredFrame:
    """A frame whose chunks are scored and handed to the store, not all stored yet."""

    lineage: dict[str, Any]
    parts: list[tuple[pd.DataFrame, Future]] = field(default_factory=list)

    def stored(self) -> bool:
        return all(future.done() for _, future in self.parts)

    def write_outputs(self, layout, model_from: str) -> dict:
        """Wait for the frame's chunks, then write its receipt and summary.

        A record this version scored before keeps its stored score: the receipt names
        the ids in the store, not the fresh ones a re-run drew. A chunk is changed only
        here, after its writer is done with it.
        """
        receipts, inserted = [], 0
        for scored, future in self.parts:
            added, scored["score_id"] = future.result()
            inserted += added
            receipts.append(scored)
        receipt = (
            pd.concat(receipts, ignore_index=True)
            if receipts
            else score_rows(None, pd.DataFrame(), [], "", 0)
        )
        return write_frame_outputs(layout, receipt, inserted, self.lineage, model_from)


def _score_frame(settings, layout, model: Any, writers, lineage: dict[str, Any]) -> ScoredFrame:
    from tqdm import tqdm

    from pipeline.store import new_batch_score_ids, utcnow

    frame = lineage["frame"]
    data = pd.read_parquet(layout.frame_file(layout.prepared, frame))
    inputs, id_column = settings.model_inputs, settings.contract.id_column
    pending = ScoredFrame(lineage)
    progress = tqdm(total=len(data), desc=f"score frame {frame}", unit="rows", disable=None)
    try:
        for part in chunks(data, settings.score.chunk_rows):
            scored = score_rows(model, part, inputs, id_column, lineage["threshold"])
            scored["score_id"] = new_batch_score_ids(len(scored))
            pending.parts.append((scored, writers.submit(scored, lineage, utcnow())))
            progress.update(len(part))
    finally:
        progress.close()
    return pending


def write_frame_outputs(
    layout, receipt: pd.DataFrame, inserted: int, lineage: dict[str, Any], model_from: str
) -> dict:
    """A frame's receipt (data/scored) and summary (reports/score), whichever engine scored.

    `receipt` is record_id, score, decision and the stored score_id, in input order.
    """
    from pipeline.io import write_json, write_parquet
    from pipeline.store import utcnow

    frame = lineage["frame"]
    write_parquet(layout.frame_file(layout.scored, frame), receipt)
    summary = {
        "frame": frame,
        "rows": len(receipt),
        "inserted": inserted,
        "already_stored": len(receipt) - inserted,
        "flagged": int(receipt["decision"].sum()) if len(receipt) else 0,
        "flag_rate": float(receipt["decision"].mean()) if len(receipt) else 0.0,
        "mean_score": float(np.mean(receipt["score"])) if len(receipt) else 0.0,
        "model_version": lineage["model_version"],
        "model_from": model_from,
        # When this receipt was written. The store is state DVC cannot see: identical
        # scores would give an identical receipt, and label (which depends on this
        # file) would be skipped even when this run's store has never seen a label.
        "scored_at": utcnow().isoformat(),
    }
    write_json(layout.frame_file(layout.reports / "score", frame, ".json"), summary)
    return summary
