"""Benchmark the whole pipeline: `dvc repro` end to end on the default data, per algorithm.

Each algorithm runs in a fresh copy of the repository with its own MLflow database and
score store, so nothing is skipped or reused: the figure is a cold, complete run. The
per-stage wall time and peak memory come from the stages' own reports/perf/*.json.
A second `dvc repro` right after measures the no-op check.

    python bench/pipeline.py                      # hist_gradient_boosting and random_forest
    python bench/pipeline.py --algorithm random_forest --rows 284807
    python bench/pipeline.py --data real          # the real fraud data (environment `real`)
    python bench/pipeline.py --data both          # the generator, then the real data

The real data is ../shared/data/creditcard.parquet, read through the shipped
`environments/real` overlay (`crispml env use real`): params only, as a user would.

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ["pipeline", "params.yaml", "dvc.yaml", "environments", "pyproject.toml", ".gitignore"]
TARGETS = {"hist_gradient_boosting": 120.0, "random_forest": 300.0}
PEAK_MEMORY_TARGET_MB = 2048.0


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=sys.stderr, stderr=sys.stderr)
    return time.perf_counter() - started


def _set_param(text: str, key: str, value: str) -> str:
    new, count = re.subn(rf"(?m)^(\s*{key}:)\s*\S+", rf"\g<1> {value}", text, count=1)
    if count != 1:
        raise SystemExit(f"cannot set {key} in params.yaml")
    return new


def bench(algorithm: str, rows: int | None, data: str = "generator") -> dict:
    with tempfile.TemporaryDirectory(prefix=f"crispml-bench-{algorithm}-") as tmp:
        work = Path(tmp) / "project"
        work.mkdir()
        if data == "real":
            # The overlay reads ../shared/data/creditcard.parquet, relative to the project.
            (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        for name in COPY:
            source = ROOT / name
            target = work / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        params = (work / "params.yaml").read_text()
        params = _set_param(params, "algorithm", algorithm)
        if rows is not None:
            params = _set_param(params, "rows", str(rows))
        (work / "params.yaml").write_text(params)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "CRISPML_STORE_URL")
        }
        env["CRISPML_GIT_COMMIT"] = "bench"
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
            _run(cmd, work, env)
        if data == "real":
            _run(["crispml", "env", "use", "real"], work, env)
        end_to_end = _run(["dvc", "repro"], work, env)
        noop = _run(["dvc", "repro"], work, env)
        stages = {}
        for path in sorted((work / "reports" / "perf").glob("*.json")):
            figures = json.loads(path.read_text())
            stages[figures["stage"]] = {
                "wall_seconds": figures["wall_seconds"],
                "cpu_seconds": figures["cpu_seconds"],
                "peak_memory_mb": figures["peak_memory_mb"],
            }
        metrics = json.loads((work / "reports" / "metrics.json").read_text())
        peak = max(s["peak_memory_mb"] for s in stages.values())
        return {
            "data": data,
            "algorithm": algorithm,
            "rows": json.loads((work / "reports" / "ingest.json").read_text())["rows"],
            "end_to_end_seconds": round(end_to_end, 1),
            "end_to_end_target_seconds": TARGETS.get(algorithm),
            "noop_repro_seconds": round(noop, 2),
            "peak_memory_mb": peak,
            "peak_memory_target_mb": PEAK_MEMORY_TARGET_MB,
            "stage_seconds_total": round(sum(s["wall_seconds"] for s in stages.values()), 1),
            "pr_auc": round(metrics["pr_auc"], 4),
            "roc_auc": round(metrics["roc_auc"], 4),
            "stages": stages,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--algorithm",
        action="append",
        choices=["hist_gradient_boosting", "random_forest", "logistic_regression"],
        help="repeatable; default: hist_gradient_boosting and random_forest",
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="generator rows (default: params.yaml)"
    )
    parser.add_argument(
        "--data",
        choices=["generator", "real", "both"],
        default="generator",
        help="the built-in generator (default), the real fraud data, or both",
    )
    args = parser.parse_args()
    datasets = ["generator", "real"] if args.data == "both" else [args.data]
    results = [
        bench(a, args.rows if d == "generator" else None, d)
        for d in datasets
        for a in args.algorithm or list(TARGETS)
    ]
    print(json.dumps({"machine": {"cpus": os.cpu_count()}, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
