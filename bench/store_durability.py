"""Benchmark the SQLite store's durability levels: what `synchronous=FULL` costs.

The store runs SQLite in WAL mode. With `synchronous=NORMAL` (the default) a commit
appends to the WAL without waiting for the disk; the database is never corrupted, but a
power loss may undo the newest commits. With `synchronous=FULL` (`?synchronous=FULL` in
the store's URL) every commit waits for an fsync of the WAL, so an answered score
survives a power loss too. The cost is per commit, so it depends on how many rows share
one transaction:

* `single_row`: one score per transaction (a service answering one request at a time);
* `group_<n>`: n scores per transaction, as the service's group commit makes them when
  requests arrive together (about the concurrency in rows; up to 2,000 per commit);
* `batch_chunk`: one chunk of the batch score stage (`score.chunk_rows`, 50,000 by
  default) through `store_batch_scores`.

Rows have the shape the service and the score stage write: a random id, a record id,
the score, the decision and the full lineage. Each figure is the median of `--repeat`
runs, each on a fresh database file in `--dir` (default: the system's temporary folder;
put it on the disk the store lives on, since fsync is what is measured, and a tmpfs
would make both levels look alike).

    python bench/store_durability.py
    python bench/store_durability.py --dir data/store --rows 2000 --repeat 3

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, this folder comes first on sys.path, and its pipeline.py (the pipeline
# benchmark) would hide the package of the same name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVELS = ("NORMAL", "FULL")


def score_row(i: int, channel: str) -> dict[str, Any]:
    from pipeline.store import new_score_id, utcnow

    score = (i * 7919 % 1000) / 1000
    return {
        "score_id": new_score_id(),
        "record_id": f"tx-{i:09d}",
        "frame": 7 if channel == "batch" else None,
        "score": score,
        "decision": int(score >= 0.41),
        "threshold": 0.41,
        "model_name": "crispml-fraud",
        "model_version": "3",
        "run_id": "0f" * 16,
        "git_commit": "ab" * 20,
        "environment": "bench",
        "channel": channel,
        "source": "api:/v1/score" if channel == "api" else "generator(seed=42, rows=284807)",
        "scored_at": utcnow(),
    }


def filesystem(folder: Path) -> str:
    """The mount type under `folder` (ext4, tmpfs, ...), from /proc/mounts when there is one."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    resolved = str(folder.resolve())
    for fields in mounts:
        point = fields[1]
        if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) and len(point) > len(
            best
        ):
            best, kind = point, fields[2]
    return kind


def measure(
    folder: Path, level: str, rows: list[dict[str, Any]], per_commit: int, batch: bool
) -> dict[str, float]:
    """Write `rows` in transactions of `per_commit` rows on a fresh database at `level`."""
    from pipeline.store import ScoreStore

    path = folder / f"bench-{level}-{per_commit}-{time.monotonic_ns()}.db"
    store = ScoreStore(f"sqlite:///{path}?synchronous={level}")
    store.migrate()
    write: Callable[[list[dict[str, Any]]], Any] = (
        store.store_batch_scores if batch else store.insert_scores
    )
    write([score_row(10**8, "batch" if batch else "api")])  # connection and pages warm
    latencies = []
    started = time.perf_counter()
    for start in range(0, len(rows), per_commit):
        begun = time.perf_counter()
        write(rows[start : start + per_commit])
        latencies.append(time.perf_counter() - begun)
    seconds = time.perf_counter() - started
    store.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    latencies.sort()
    return {
        "rows_per_s": len(rows) / seconds,
        "commits_per_s": len(latencies) / seconds,
        "commit_p50_ms": 1000 * latencies[len(latencies) // 2],
        "commit_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--rows", type=int, default=2000, help="rows per single/group run")
    parser.add_argument("--groups", default="8,64,500", help="rows per group commit")
    parser.add_argument("--chunk", type=int, default=50_000, help="batch stage chunk rows")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g]
    base = Path(args.dir or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="crispml-bench-durability-", dir=base))
    workloads: list[tuple[str, int, int, bool]] = [
        ("single_row", args.rows, 1, False),
        *((f"group_{g}", max(args.rows, g * 20), g, False) for g in groups),
        ("batch_chunk", args.chunk, args.chunk, True),
    ]
    results: dict[str, dict[str, Any]] = {level: {} for level in LEVELS}
    try:
        for name, count, per_commit, batch in workloads:
            channel = "batch" if batch else "api"
            for level in LEVELS:
                runs = []
                for attempt in range(args.repeat):
                    rows = [score_row(i, channel) for i in range(count)]
                    runs.append(measure(folder, level, rows, per_commit, batch))
                    print(
                        f"{name} {level} run {attempt + 1}: {runs[-1]['rows_per_s']:.0f} rows/s",
                        file=sys.stderr,
                    )
                results[level][name] = {"rows": count, "rows_per_commit": per_commit}
                results[level][name].update(median_of(runs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cost = {
        name: round(results["NORMAL"][name]["rows_per_s"] / results["FULL"][name]["rows_per_s"], 2)
        for name, *_ in workloads
    }
    import sqlite3

    print(
        json.dumps(
            {
                "what": "score store inserts per second, SQLite WAL, synchronous NORMAL vs FULL",
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                    "filesystem": filesystem(base),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                },
                "repeat": args.repeat,
                "results": results,
                "normal_over_full_rows_per_s": cost,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
