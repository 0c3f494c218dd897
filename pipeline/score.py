"""Score (CRISP-DM: deployment): batch-score a frame and persist every score with lineage.

The model is the version that holds the environment's alias after the gate, pinned by
number, so a score row always names the exact model that produced it. Chunks bound
memory and each chunk is one transaction. Score ids are random (a known transaction id
must not give away its score id); the store keeps one batch score per record, model
version and environment, so a re-run (or a run resumed after a crash) adds nothing
twice, and its receipt names the ids already stored.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    return pd.DataFrame(
        {
            "record_id": data[id_column].astype(str).to_numpy(),
            "score": probability.astype("float64"),
            "decision": (probability >= threshold).astype("int64"),
        }
    )


def serving_model(registered: Registered) -> Serving:
    """The model that may score: the alias holder. None holding it is a clear stop, not a guess."""
    return registered.require_serving()


def run(settings, frame: int) -> dict:
    """Entry point: data/prepared/frame_<n> -> score store, data/scored/, reports/score/."""
    from tqdm import tqdm

    from pipeline import tracking
    from pipeline.io import write_json, write_parquet
    from pipeline.layout import Layout
    from pipeline.registered import Registered
    from pipeline.saved_model import load_model
    from pipeline.sources import describe
    from pipeline.store import ScoreStore, new_score_id, utcnow
    from pipeline.store.pseudonymise import require_pseudonymised

    layout = Layout(settings.root)
    registered = Registered.load(layout.registered)
    serving = serving_model(registered)
    name, version = registered.model_name, serving.version
    tracking.configure(settings)
    model = load_model(f"models:/{name}/{version}")
    data = pd.read_parquet(layout.frame_file(layout.prepared, frame))
    contract, env = settings.contract, settings.env
    lineage = {
        "frame": frame,
        "threshold": serving.threshold,
        "model_name": name,
        "model_version": version,
        "run_id": serving.run_id,
        "git_commit": tracking.git_commit(settings.root),
        "environment": env,
        "channel": "batch",
        "source": describe(settings.environment.data.source, settings)[:300],
    }
    store = ScoreStore(settings.store_url)
    store.migrate()
    require_pseudonymised(store, env, settings.environment.privacy)
    receipts, inserted = [], 0
    size = settings.score.chunk_rows
    progress = tqdm(total=len(data), desc=f"score frame {frame}", unit="rows", disable=None)
    try:
        for part in chunks(data, size):
            scored = score_rows(
                model, part, settings.model_inputs, contract.id_column, lineage["threshold"]
            )
            scored["score_id"] = [new_score_id() for _ in range(len(scored))]
            now = utcnow()
            rows = [{**lineage, **row, "scored_at": now} for row in scored.to_dict("records")]
            # A record this version scored before keeps its stored score: the receipt
            # names the ids in the store, not the fresh ones a re-run drew.
            added, scored["score_id"] = store.store_batch_scores(rows)
            inserted += added
            receipts.append(scored)
            progress.update(len(part))
    finally:
        progress.close()
        store.dispose()
    receipt = (
        pd.concat(receipts, ignore_index=True) if receipts else score_rows(None, data, [], "", 0)
    )
    write_parquet(layout.frame_file(layout.scored, frame), receipt)
    summary = {
        "frame": frame,
        "rows": len(receipt),
        "inserted": inserted,
        "already_stored": len(receipt) - inserted,
        "flagged": int(receipt["decision"].sum()) if len(receipt) else 0,
        "flag_rate": float(receipt["decision"].mean()) if len(receipt) else 0.0,
        "mean_score": float(np.mean(receipt["score"])) if len(receipt) else 0.0,
        "model_version": version,
        # When this receipt was written. The store is state DVC cannot see: identical
        # scores would give an identical receipt, and label (which depends on this
        # file) would be skipped even when this run's store has never seen a label.
        "scored_at": utcnow().isoformat(),
    }
    write_json(layout.frame_file(layout.reports / "score", frame, ".json"), summary)
    return summary
