"""Wall time, CPU time and peak memory of each stage, as the original entry/exit log did.

Each stage leaves one JSON line on stderr and a small JSON file under reports/perf/
that DVC declares as a metric, so a slowdown shows in `dvc metrics diff` and, through
the register stage, in MLflow across runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.io import write_json

log = logging.getLogger("crispml.perf")


def peak_rss_mb() -> float:
    """Peak resident memory of this process; Linux reports ru_maxrss in KiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024 if sys.platform != "darwin" else kib / 1024 / 1024, 1)


@contextlib.contextmanager
def measured(stage: str, perf_dir: Path | None) -> Iterator[dict]:
    """Measure the block; on success log one structured line and write `<perf_dir>/<stage>.json`."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    record: dict = {"stage": stage}
    yield record
    record.update(
        wall_seconds=round(time.perf_counter() - wall0, 3),
        cpu_seconds=round(time.process_time() - cpu0, 3),
        peak_memory_mb=peak_rss_mb(),
    )
    # In a fork of the warm process (pipeline/warm.py), part of the peak is the memory
    # shared with it from the start: the libraries it imported.
    inherited = os.environ.get("CRISPML_IN_WARM_FORK")
    record["warm_start"] = inherited is not None
    if inherited is not None:
        with contextlib.suppress(ValueError):
            record["inherited_memory_mb"] = float(inherited)
    print(json.dumps({"event": "stage_finished", **record}), file=sys.stderr, flush=True)
    if perf_dir is not None:
        write_json(perf_dir / f"{stage}.json", record)


def read_perf(perf_dir: Path) -> dict[str, dict]:
    """All stage figures written so far, keyed by stage name."""
    out: dict[str, dict] = {}
    for path in sorted(Path(perf_dir).glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            out[path.stem] = json.loads(path.read_text())
    return out
