"""Benchmark the pipeline against the same ML work done by one plain script.

For each algorithm, in a fresh copy of the repository (its own MLflow database and score
store, so nothing is skipped or reused), in this order:

1. `bench/baseline.py`: the same ML work in one process, no DVC (timed from outside);
2. a cold `dvc repro`, then a second `dvc repro` that has nothing to do (the no-op check);
   the copy has a warm-process folder of its own, so the repro starts its own warm
   process (pipeline/warm.py) the way a user's first repro does, and nothing of an
   earlier run serves it;
3. the fixed cost of a score and a label stage: `crispml score --frame F` and
   `crispml label --frame F` on a 10-row frame, median of three, process start to exit,
   in the warm process and each in a process of its own.

The figure is the ratio of 2 to 1, measured in the same run: the machines are noisy, the
ratio much less so. Per-stage wall time and peak memory come from reports/perf/*.json,
and score and label rows/s from the stages' own receipts and wall times.

    python bench/pipeline.py                          # gradient boosting and random forest
    python bench/pipeline.py --algorithm random_forest
    python bench/pipeline.py --rows 2848070           # any generator size
    python bench/pipeline.py --growth 10              # 1x, then 10x the rows: time and memory
    python bench/pipeline.py --per-frame-stages       # score and label as one stage per frame
    python bench/pipeline.py --data real              # the real fraud data (environment `real`)
    python bench/pipeline.py --warm-start both        # with and without the warm process

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["pipeline", "bench", "environments"]
COPY_FILES = ["params.yaml", "dvc.yaml", "pyproject.toml", ".gitignore"]
RATIO_TARGET = 1.25
GROWTH_TARGET = 10.5
PEAK_MEMORY_TARGET_MB = 2048.0
NOOP_TARGET_SECONDS = 3.0
FIXED_COST_TARGET_SECONDS = 1.0
FIXED_COST_ROWS = 10


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=sys.stderr, stderr=sys.stderr)
    return time.perf_counter() - started


def _set_param(text: str, key: str, value: str) -> str:
    new, count = re.subn(rf"(?m)^(\s*{key}:)\s*\S+", rf"\g<1> {value}", text, count=1)
    if count != 1:
        raise SystemExit(f"cannot set {key} in params.yaml")
    return new


def per_frame_stages(dvc_yaml: str) -> str:
    """The shipped dvc.yaml with score and label as one stage per frame (`foreach`).

    The layout before issue 11, kept here to measure it beside the shipped one: the
    same commands and code deps, each frame's own prepared file, receipt and parquet.
    """
    spec = yaml.safe_load(dvc_yaml)
    stages = spec["stages"]

    def per_frame(name: str, data_deps: dict[str, str], outs: list) -> dict:
        stage = stages[name]
        return {
            "foreach": "${frames.score}",
            "do": {
                "cmd": f"crispml {name} --frame ${{item}}",
                "deps": [d for d in stage["deps"] if d not in data_deps] + list(data_deps.values()),
                "params": [p for p in stage["params"] if p != "frames.score"],
                "outs": outs,
            },
        }

    stages["score"] = per_frame(
        "score",
        {"data/prepared": "data/prepared/frame_${item}.parquet"},
        [
            "data/scored/frame_${item}.parquet",
            {"reports/score/frame_${item}.json": {"cache": False}},
        ],
    )
    stages["label"] = per_frame(
        "label",
        {
            "data/scored": "data/scored/frame_${item}.parquet",
            "reports/score": "reports/score/frame_${item}.json",
            "data/prepared": "data/prepared/frame_${item}.parquet",
        },
        [{"reports/labels/frame_${item}.json": {"cache": False}}],
    )
    return yaml.safe_dump(spec, sort_keys=False)


def _project(tmp: Path, algorithm: str, rows: int | None, data: str, per_frame: bool) -> Path:
    work = tmp / "project"
    work.mkdir()
    if data == "real":
        # The overlay reads ../shared/data/creditcard.parquet, relative to the project.
        (tmp / "shared").symlink_to(ROOT.parent / "shared")
    for name in COPY:
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in COPY_FILES:
        shutil.copy2(ROOT / name, work / name)
    params = (work / "params.yaml").read_text()
    params = _set_param(params, "algorithm", algorithm)
    if rows is not None:
        params = _set_param(params, "rows", str(rows))
    (work / "params.yaml").write_text(params)
    if per_frame:
        (work / "dvc.yaml").write_text(per_frame_stages((work / "dvc.yaml").read_text()))
    return work


def _environment(work: Path, tmp: Path, warm: bool) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "MLFLOW_TRACKING_URI",
            "CRISPML_STORE_URL",
            "VIRTUAL_ENV_PROMPT",
            "CRISPML_WARM_DIR",
        )
    }
    env["CRISPML_GIT_COMMIT"] = "bench"
    # The copy's own code, not the installed one (an editable install points elsewhere).
    env["PYTHONPATH"] = str(work)
    # No warm process of an earlier run can serve this one: the cold repro starts its own,
    # as a user's first `dvc repro` of the day does (pipeline/warm.py).
    env["CRISPML_WARM_DIR"] = str(tmp / "warm")
    env["CRISPML_WARM_START"] = "1" if warm else "0"
    return env


def fixed_costs(work: Path, env: dict[str, str], frame: int) -> dict:
    """Process start to exit of `crispml score` and `crispml label` on a 10-row frame.

    Median of three, with the warm process of the repro (when warm start is on) and, for
    comparison, each command in a process of its own (CRISPML_WARM_START=0).
    """
    import pandas as pd

    prepared = work / "data" / "prepared" / f"frame_{frame}.parquet"

    pd.read_parquet(prepared).head(FIXED_COST_ROWS).to_parquet(prepared, index=False)
    figures: dict = {}
    modes = {"": env, "cold_": {**env, "CRISPML_WARM_START": "0"}}
    if env.get("CRISPML_WARM_START") == "0":
        modes = {"": env}
    for prefix, mode_env in modes.items():
        for step in ("score", "label"):
            cmd = ["crispml", step, "--frame", str(frame)]
            runs = [_run(cmd, work, mode_env) for _ in range(3)]
            figures[f"{prefix}{step}_seconds"] = round(statistics.median(runs), 2)
    figures["rows"] = FIXED_COST_ROWS
    figures["target_seconds"] = FIXED_COST_TARGET_SECONDS
    return figures


def _stage_figures(work: Path) -> dict[str, dict]:
    stages = {}
    for path in sorted((work / "reports" / "perf").glob("*.json")):
        figures = json.loads(path.read_text())
        stages[figures["stage"]] = {
            "wall_seconds": figures["wall_seconds"],
            "cpu_seconds": figures["cpu_seconds"],
            "peak_memory_mb": figures["peak_memory_mb"],
        }
    return stages


def _rows_per_second(work: Path, stages: dict[str, dict], step: str, folder: str) -> dict:
    receipts = [json.loads(p.read_text()) for p in (work / "reports" / folder).glob("*.json")]
    rows = sum(r.get("rows", r.get("labeled", 0)) for r in receipts)
    seconds = sum(s["wall_seconds"] for name, s in stages.items() if name.startswith(step))
    return {
        "rows": rows,
        "stage_seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
    }


def bench(
    algorithm: str,
    rows: int | None,
    data: str = "generator",
    *,
    per_frame: bool = False,
    baseline: bool = True,
    warm: bool = True,
) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"crispml-bench-{algorithm}-") as tmp:
        work = _project(Path(tmp), algorithm, rows, data, per_frame)
        env = _environment(work, Path(tmp), warm)
        try:
            return _bench_in(work, env, algorithm, data, baseline, warm, per_frame)
        finally:
            # The copy's warm process goes with the copy (it would idle out anyway).
            subprocess.run(["crispml", "warm", "stop"], env=env, capture_output=True, check=False)


def _bench_in(
    work: Path,
    env: dict[str, str],
    algorithm: str,
    data: str,
    baseline: bool,
    warm: bool,
    per_frame: bool,
) -> dict:
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        _run(cmd, work, env)
    if data == "real":
        _run(["crispml", "env", "use", "real"], work, env)
    result: dict = {"data": data, "algorithm": algorithm, "warm_start": warm}
    if baseline:
        script = [sys.executable, str(work / "bench" / "baseline.py"), "--root", str(work)]
        started = time.perf_counter()
        out = subprocess.run(script, cwd=work, env=env, check=True, capture_output=True)
        result["baseline_seconds"] = round(time.perf_counter() - started, 1)
        result["baseline"] = json.loads(out.stdout)
    pipeline_seconds = _run(["dvc", "repro"], work, env)
    result["pipeline_seconds"] = round(pipeline_seconds, 1)
    if baseline:
        result["ratio"] = round(pipeline_seconds / result["baseline_seconds"], 3)
        result["ratio_target"] = RATIO_TARGET
    result["noop_repro_seconds"] = round(_run(["dvc", "repro"], work, env), 2)
    result["noop_target_seconds"] = NOOP_TARGET_SECONDS
    stages = _stage_figures(work)
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    frame = json.loads((work / "reports" / "ingest.json").read_text())
    result.update(
        {
            "layout": "stage per frame" if per_frame else "one stage for all frames",
            "rows": frame["rows"],
            "peak_memory_mb": max(s["peak_memory_mb"] for s in stages.values()),
            "peak_memory_target_mb": PEAK_MEMORY_TARGET_MB,
            "stage_seconds_total": round(sum(s["wall_seconds"] for s in stages.values()), 1),
            "pr_auc": round(metrics["pr_auc"], 4),
            "score": _rows_per_second(work, stages, "score", "score"),
            "label": _rows_per_second(work, stages, "label", "labels"),
            "stages": stages,
        }
    )
    scored = json.loads(next((work / "reports" / "score").glob("*.json")).read_text())
    result["fixed_cost"] = fixed_costs(work, env, scored["frame"])
    return result


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
        "--growth",
        type=int,
        default=None,
        metavar="K",
        help="also run the pipeline (no baseline) at K times the rows; print the growth",
    )
    parser.add_argument(
        "--per-frame-stages",
        action="store_true",
        help="score and label as one stage per frame (foreach), to compare layouts",
    )
    parser.add_argument(
        "--data",
        choices=["generator", "real", "both"],
        default="generator",
        help="the built-in generator (default), the real fraud data, or both",
    )
    parser.add_argument(
        "--warm-start",
        choices=["on", "off", "both"],
        default="on",
        help="stage commands in forks of a warm process (the default, pipeline/warm.py), "
        "each in a process of its own (off), or both runs, one after the other",
    )
    args = parser.parse_args()
    datasets = ["generator", "real"] if args.data == "both" else [args.data]
    algorithms = args.algorithm or ["hist_gradient_boosting", "random_forest"]
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.warm_start]
    runs = [
        bench(
            a,
            args.rows if d == "generator" else None,
            d,
            per_frame=args.per_frame_stages,
            warm=warm,
        )
        for d in datasets
        for a in algorithms
        for warm in modes
    ]
    report: dict = {"machine": {"cpus": os.cpu_count()}, "runs": runs}
    if args.growth:
        report["growth"] = []
        for first in (r for r in runs if r["data"] == "generator"):
            scaled = bench(
                first["algorithm"],
                first["rows"] * args.growth,
                per_frame=args.per_frame_stages,
                baseline=False,
                warm=first["warm_start"],
            )
            report["growth"].append(
                {
                    "algorithm": first["algorithm"],
                    "warm_start": first["warm_start"],
                    "rows": [first["rows"], scaled["rows"]],
                    "pipeline_seconds": [first["pipeline_seconds"], scaled["pipeline_seconds"]],
                    "time_ratio": round(scaled["pipeline_seconds"] / first["pipeline_seconds"], 2),
                    "time_ratio_target": GROWTH_TARGET * args.growth / 10,
                    "peak_memory_mb": scaled["peak_memory_mb"],
                    "peak_memory_target_mb": PEAK_MEMORY_TARGET_MB,
                    "verify_seconds": scaled["stages"]["verify"]["wall_seconds"],
                    "stages": scaled["stages"],
                }
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
