"""Benchmark `crispml replay`: wall time per replayed day and in total, as JSON.

The replay runs on a copy of the project (code, params, environments and the prepared
frames, which `dvc repro prepare` must have produced), so the working tree's reports
are not rewritten. Each day's figure is the replay's own measurement (score, labels,
verify, and a retrain when one is triggered); `initial_seconds` is training the day-6
model and registering it.

    python bench/replay.py                 # the active environment's prepared data
    python bench/replay.py --env real      # prepared data of the environment `real`

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ["pipeline", "params.yaml", "dvc.yaml", "dvc.lock", "environments", "pyproject.toml"]
TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="project with data/prepared")
    parser.add_argument("--env", default=None, help="environment (default: the active one)")
    args = parser.parse_args()
    root = args.root.resolve()
    prepared = root / "data" / "prepared"
    if not prepared.is_dir():
        raise SystemExit(f"{prepared} is missing: run `dvc repro prepare` in {root} first")
    with tempfile.TemporaryDirectory(prefix="crispml-bench-replay-") as tmp:
        work = Path(tmp) / "project"
        work.mkdir()
        for name in COPY:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.is_file():
                shutil.copy2(source, work / name)
        shutil.copytree(prepared, work / "data" / "prepared")
        # The real data's overlay reads ../shared relative to the project.
        if (root.parent / "shared").exists():
            (Path(tmp) / "shared").symlink_to(root.parent / "shared")
        sys.path.insert(0, str(work))
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from pipeline import replay
        from pipeline.config import load_settings

        settings = load_settings(work, env=args.env)
        started = time.perf_counter()
        result = replay.run(settings)
        total = time.perf_counter() - started
    print(
        json.dumps(
            {
                "environment": result["environment"],
                "scored_rows": int(sum(d["rows"] for d in result["days"])),
                "initial_seconds": result["initial_seconds"],
                "days": {
                    str(d["day"]): {
                        "seconds": d["seconds"],
                        "retrained": d["retrained"],
                        "promoted": d["promoted"],
                    }
                    for d in result["days"]
                },
                "total_seconds": round(total, 2),
                "target_seconds": TARGET_SECONDS,
                "within_target": total <= TARGET_SECONDS,
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "summary": result["summary"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
