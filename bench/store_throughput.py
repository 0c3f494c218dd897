"""Benchmark bulk writes to the score store: batch scores and labels, rows per second.

The score stage stores one chunk (`score.chunk_rows`, 50,000 by default) per
transaction, and the label stage upserts a frame's ground truth at once. Both used to
hand the store a list of dicts, one per row; `store_batch_frame` and
`upsert_labels_frame` take the DataFrame as it is. This measures both ways on SQLite (a
temporary file, WAL, synchronous NORMAL) and on PostgreSQL (`--postgres`, or
CRISPML_TEST_DATABASE_URL; skipped, saying why, without one):

* `one_chunk`: `--rows` rows (30,000, about one scored frame) in one call;
* `full`: `--total` rows (284,807, the whole reference data set) in chunks of
  `--chunk-rows`;

each first into an empty store (`fresh`) and then again, with new random score ids,
into the store that holds them (`rerun`: nothing is added; for labels every row is
overwritten). The dict path's time includes building the dicts, as the stages did
(`[{**lineage, **row, "scored_at": now} for row in scored.to_dict("records")]`):
that is part of what it cost them. The `writers` path (scores only) hands the chunks to
`pipeline.store.writers.BatchWriters`, as the score stage does: one connection on
SQLite, two writing at once on PostgreSQL, each chunk still its own transaction. Each
figure is the median of `--repeat` runs.

    python bench/store_throughput.py
    python bench/store_throughput.py --postgres postgresql+psycopg://postgres@127.0.0.1/test

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Run as a script, this folder comes first on sys.path, and its pipeline.py (the pipeline
# benchmark) would hide the package of the same name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import ScoreStore, new_batch_score_ids, utcnow
from pipeline.store.writers import BatchWriters

LINEAGE = {
    "frame": 7,
    "threshold": 0.41,
    "model_name": "crispml-fraud",
    "model_version": "3",
    "run_id": "0f" * 16,
    "git_commit": "ab" * 20,
    "environment": "bench",
    "channel": "batch",
    "source": "generator(seed=42, rows=284807)",
}


def scored_frame(start: int, count: int) -> pd.DataFrame:
    """What score_rows hands the stage, with fresh random ids: as a chunk arrives."""
    index = np.arange(start, start + count)
    score = (index * 7919 % 1000) / 1000
    return pd.DataFrame(
        {
            "record_id": [f"tx-{i:09d}" for i in index],
            "score": score.astype("float64"),
            "decision": (score >= 0.41).astype("int64"),
            "score_id": new_batch_score_ids(count),
        }
    )


def label_frame(start: int, count: int, flip: int) -> pd.DataFrame:
    index = np.arange(start, start + count)
    return pd.DataFrame(
        {
            "environment": "bench",
            "record_id": [f"tx-{i:09d}" for i in index],
            "label": ((index + flip) % 2).astype("int64"),
            "source": "file:truth.csv",
            "labeled_at": pd.Timestamp(utcnow()),
        }
    )


def write_scores(store: ScoreStore, path: str, scored: pd.DataFrame) -> int:
    now = utcnow()
    if path == "frame":
        return store.store_batch_frame(scored, LINEAGE, now)[0]
    rows = [{**LINEAGE, **row, "scored_at": now} for row in scored.to_dict("records")]
    return store.store_batch_scores(rows)[0]


def write_labels(store: ScoreStore, path: str, labels: pd.DataFrame) -> int:
    if path == "frame":
        return store.upsert_labels_frame(labels)
    now = labels["labeled_at"].iloc[0].to_pydatetime()
    return store.upsert_labels(
        {
            "environment": "bench",
            "record_id": r,
            "label": int(lab),
            "source": "file:truth.csv",
            "labeled_at": now,
        }
        for r, lab in zip(labels["record_id"], labels["label"], strict=True)
    )


def write_scores_in_background(store: ScoreStore, chunks: list[pd.DataFrame]) -> int:
    """As the score stage stores a frame: chunks handed to `BatchWriters`, then awaited."""
    with BatchWriters(store) as writers:
        futures = [writers.submit(chunk, LINEAGE, utcnow()) for chunk in chunks]
        return sum(future.result()[0] for future in futures)


def timed(
    store: ScoreStore, write: Callable[[ScoreStore, pd.DataFrame], int], chunks: list
) -> dict[str, float]:
    started = time.perf_counter()
    written = sum(write(store, chunk) for chunk in chunks)
    seconds = time.perf_counter() - started
    rows = sum(len(chunk) for chunk in chunks)
    return {"rows": rows, "written": written, "seconds": seconds, "rows_per_s": rows / seconds}


def run_workload(
    open_store: Callable[[], Any], kind: str, path: str, total: int, chunk_rows: int
) -> dict[str, dict[str, float]]:
    """One fresh and one repeated write of `total` rows, on an empty store."""
    spans = [(s, min(chunk_rows, total - s)) for s in range(0, total, chunk_rows)]
    with open_store() as store:
        out = {}
        for attempt, label in enumerate(("fresh", "rerun")):
            if kind == "scores" and path == "writers":
                chunks = [scored_frame(s, n) for s, n in spans]
                out[label] = timed(store, write_scores_in_background, [chunks])
                out[label]["rows"] = total
                out[label]["rows_per_s"] = total / out[label]["seconds"]
            elif kind == "scores":
                chunks = [scored_frame(s, n) for s, n in spans]
                out[label] = timed(store, lambda st, c: write_scores(st, path, c), chunks)
            else:
                chunks = [label_frame(s, n, attempt) for s, n in spans]
                out[label] = timed(store, lambda st, c: write_labels(st, path, c), chunks)
        return out


def median_of(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        phase: {
            key: round(statistics.median(r[phase][key] for r in runs), 3) for key in runs[0][phase]
        }
        for phase in runs[0]
    }


def sqlite_opener(folder: Path) -> Callable[[], Any]:
    @contextmanager
    def open_store() -> Iterator[ScoreStore]:
        path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"
        store = ScoreStore(f"sqlite:///{path}")
        store.migrate()
        try:
            yield store
        finally:
            store.dispose()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    return open_store


def postgres_opener(url: str) -> Callable[[], Any]:
    import sqlalchemy as sa

    @contextmanager
    def open_store() -> Iterator[ScoreStore]:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(url)
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        store = ScoreStore(url, connect_args={"options": f"-csearch_path={schema}"})
        try:
            store.migrate()
            yield store
        finally:
            store.dispose()
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()

    return open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000, help="rows of the one-chunk run")
    parser.add_argument("--total", type=int, default=284_807, help="rows of the full run")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--paths",
        default="frame,dict,writers",
        help="frame, dict, writers (scores only, as the score stage stores), comma-separated",
    )
    parser.add_argument("--kinds", default="scores,labels", help="scores, labels or both")
    parser.add_argument("--workloads", default="one_chunk,full", help="one_chunk, full or both")
    parser.add_argument("--dialects", default="sqlite,postgresql")
    parser.add_argument("--postgres", default=os.environ.get("CRISPML_TEST_DATABASE_URL"))
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if "frame" in paths and not hasattr(ScoreStore, "store_batch_frame"):
        paths.remove("frame")  # a store from before the frame methods: the dict path only
    base = Path(args.dir or tempfile.gettempdir())
    folder = Path(tempfile.mkdtemp(prefix="crispml-bench-throughput-", dir=base))
    wanted = args.dialects.split(",")
    dialects: dict[str, Any] = {}
    skipped = {}
    if "sqlite" in wanted:
        dialects["sqlite"] = sqlite_opener(folder)
    if "postgresql" in wanted and args.postgres:
        dialects["postgresql"] = postgres_opener(args.postgres)
    elif "postgresql" in wanted:
        skipped["postgresql"] = "no URL: pass --postgres or set CRISPML_TEST_DATABASE_URL"
    workloads = {
        name: sizes
        for name, sizes in {
            "one_chunk": (args.rows, args.chunk_rows),
            "full": (args.total, args.chunk_rows),
        }.items()
        if name in args.workloads.split(",")
    }
    results: dict[str, Any] = {name: {} for name in dialects}
    try:
        for dialect, opener in dialects.items():
            for kind in args.kinds.split(","):
                for workload, (total, chunk_rows) in workloads.items():
                    for path in paths:
                        if path == "writers" and kind != "scores":
                            continue
                        runs = []
                        for attempt in range(args.repeat):
                            runs.append(run_workload(opener, kind, path, total, chunk_rows))
                            print(
                                f"{dialect} {kind} {workload} {path} run {attempt + 1}: "
                                + ", ".join(
                                    f"{phase} {r['rows_per_s']:.0f} rows/s"
                                    for phase, r in runs[-1].items()
                                ),
                                file=sys.stderr,
                            )
                        results[dialect].setdefault(kind, {}).setdefault(workload, {})[path] = (
                            median_of(runs)
                        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    import sqlite3

    print(
        json.dumps(
            {
                "what": "score store bulk writes, rows per second, frame path vs dict path",
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                },
                "rows": args.rows,
                "total": args.total,
                "chunk_rows": args.chunk_rows,
                "repeat": args.repeat,
                "results": results,
                "skipped": skipped,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
