"""Benchmark the two score engines, pandas and Spark, on the default frames and bigger ones.

Where does Spark start to pay? A local Spark session is a JVM plus Python workers that
each import the model's libraries; the pandas engine is one process that is already
running. So this measures, in a fresh copy of the repository (default data, frames.score
of params.yaml):

1. ingest, prepare, curate and train, run once as stage commands (not timed), and a
   register receipt that makes the train output the serving version, so neither engine
   touches a registry;
2. the start of a Spark session at `score.spark_master` (local[*] by default), alone;
3. each engine scoring frames.score into a fresh SQLite store (the embedded default),
   wall time and rows/s, in the same process, at 1x the frames, then each frame repeated
   5x and 20x (the copies get record ids of their own, so every row is new to the
   store). The first Spark run also pays for starting its Python workers and loading
   the model in them, as a stage's first job would; it runs once more, warm.

The machine is shared: the load average is recorded beside each figure.

    python bench/score_engines.py                    # 1x, 5x, 20x
    python bench/score_engines.py --scales 1 5       # any repeats
    python bench/score_engines.py --store-url postgresql+psycopg://...   # one store for all

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ["pipeline", "environments"]
COPY_FILES = ["params.yaml", "dvc.yaml", "pyproject.toml", ".gitignore"]
PREPARE_STAGES = ("ingest", "prepare", "curate", "train")
# Run as a script, bench/ comes first on sys.path, and its pipeline.py (a sibling
# benchmark) would hide the package: the repository's root goes there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
VERSION = "1"


def log(message: str) -> None:
    print(f"[score_engines] {message}", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_copy(target: Path) -> Path:
    for name in COPY:
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in COPY_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, target / name)
    return target


def stage_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.pop("CRISPML_STORE_URL", None)
    env["CRISPML_WARM_START"] = "0"  # plain processes: nothing shared with other work
    env["CRISPML_GIT_COMMIT"] = "bench" * 8
    return env


def prepare_copy(root: Path) -> None:
    """The default data up to a trained model, and the model made the serving version."""
    from pipeline.config import load_settings
    from pipeline.layout import Layout
    from pipeline.registered import Registered
    from pipeline.saved_model import artifact_hash

    env = stage_environment()
    for stage in PREPARE_STAGES:
        log(f"crispml {stage}")
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", stage],
            cwd=root,
            env=env,
            check=True,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
    settings = load_settings(root)
    layout = Layout(root)
    Registered.parse(
        {
            "model_name": settings.registration.model_name,
            "alias": settings.alias,
            "candidate_version": VERSION,
            "artifact_sha256": artifact_hash(layout.model),
            "gate": {"passed": True, "reasons": []},
            "serving": {"version": VERSION, "run_id": "bench", "threshold": 0.5},
        }
    ).write(layout.registered)


def scale_frames(root: Path, base: dict[int, object], times: int) -> int:
    """Each scored frame repeated `times` times, with record ids of their own; total rows."""
    import pandas as pd

    from pipeline.config import load_settings
    from pipeline.layout import Layout

    settings = load_settings(root)
    layout = Layout(root)
    id_column = settings.contract.id_column
    total = 0
    for frame, data in base.items():
        copies = [
            data.assign(**{id_column: data[id_column].astype(str) + f"~{i}"}) if i else data
            for i in range(times)
        ]
        scaled = pd.concat(copies, ignore_index=True)
        scaled.to_parquet(layout.frame_file(layout.prepared, frame), index=False)
        total += len(scaled)
    return total


def score_once(root: Path, engine: str, store_url: str | None, stores: Path) -> dict:
    """One run of `run_frames` over frames.score into a store that holds nothing yet."""
    from pipeline import score, tracking
    from pipeline.config import load_settings

    settings = load_settings(root)
    settings = settings.model_copy(
        update={"score": settings.score.model_copy(update={"engine": engine})}
    )
    if store_url is None:
        os.environ["CRISPML_STORE_URL"] = f"sqlite:///{stores / f'{uuid.uuid4().hex}.db'}"
    else:
        # A fresh environment name: nothing of an earlier run is already stored.
        os.environ["CRISPML_STORE_URL"] = store_url
        settings = settings.model_copy(update={"env": f"bench-{uuid.uuid4().hex[:8]}"})
    before = load()
    with tracking.pointed_at(settings.tracking_uri):
        started = time.perf_counter()
        summaries = score.run_frames(settings, list(settings.frames.score))
        seconds = time.perf_counter() - started
    rows = sum(s["rows"] for s in summaries)
    inserted = sum(s["inserted"] for s in summaries)
    if inserted != rows:
        raise SystemExit(f"{engine}: {inserted} of {rows} rows stored, expected all")
    return {
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "rows": rows,
        "load_average": [before, load()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--store-url", default=None, help="one store for every run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="crispml-bench-engines-"))
    root = make_copy(folder / "project")
    stores = folder / "stores"
    stores.mkdir()
    os.chdir(root)  # whatever a library writes beside the process lands in the copy
    try:
        prepare_copy(root)
        import pandas as pd

        from pipeline.config import load_settings
        from pipeline.layout import Layout
        from pipeline.score_spark import require_spark, spark_session

        settings = load_settings(root)
        layout = Layout(root)
        base = {
            n: pd.read_parquet(layout.frame_file(layout.prepared, n)) for n in settings.frames.score
        }
        require_spark()
        log(f"starting Spark at {settings.score.spark_master}")
        load_before = load()
        started = time.perf_counter()
        with spark_session(settings.score.spark_master) as spark:
            session_seconds = time.perf_counter() - started
            result = {
                "cores": os.cpu_count(),
                "spark_master": settings.score.spark_master,
                "spark_default_parallelism": spark.sparkContext.defaultParallelism,
                "chunk_rows": settings.score.chunk_rows,
                "store": "sqlite (a fresh file per run)" if args.store_url is None else "given",
                "frames": list(settings.frames.score),
                "spark_session_start": {
                    "seconds": round(session_seconds, 2),
                    "load_average": [load_before, load()],
                },
                "runs": [],
            }
            for times in args.scales:
                rows = scale_frames(root, base, times)
                run = {"scale": times, "rows": rows}
                for engine in ("pandas", "spark"):
                    log(f"{engine} at {times}x ({rows} rows)")
                    run[engine] = score_once(root, engine, args.store_url, stores)
                if times == args.scales[0]:
                    # The first Spark job started the Python workers and loaded the model
                    # in them; the same job again shows what a warm session costs.
                    log(f"spark again at {times}x, workers warm")
                    run["spark_warm"] = score_once(root, "spark", args.store_url, stores)
                run["spark_with_session_start_seconds"] = round(
                    run["spark"]["seconds"] + session_seconds, 2
                )
                run["spark_over_pandas"] = round(
                    run["spark"]["seconds"] / run["pandas"]["seconds"], 2
                )
                result["runs"].append(run)
                log(json.dumps(run))
        faster = [r["scale"] for r in result["runs"] if r["spark_over_pandas"] < 1]
        result["spark_faster_from_scale"] = min(faster) if faster else None
        print(json.dumps(result, indent=2))
    finally:
        os.environ.pop("CRISPML_STORE_URL", None)
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
