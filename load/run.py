"""Load-test the scoring service with Locust, headless and bounded, and judge the result.

Starts `crispml serve --workers N` on a free loopback port, runs the scenario of
load/locustfile.py against it for a fixed time with a fixed number of users, stops the
service, and reads Locust's CSV: the run fails on any 5xx answer, any other failed
request, or a p99 above the limit. The users, spawn rate, duration and p99 limit
default to params.yaml's `load:` block.

    python load/run.py --root .                          # params.yaml's numbers, 1 worker
    python load/run.py --root . --workers 3 --users 50 --duration 60 --out reports/perf/load

The repository needs a model behind its environment's alias (MLFLOW_TRACKING_URI names
the registry) or `--model-uri`; `--store-url` overrides the environment's store (more
than one worker needs PostgreSQL). Only this machine is ever loaded: a `--host` other
than 127.0.0.1, ::1 or localhost is refused. Prints the verdict as JSON and writes,
under `--out` (default: a new temporary folder), Locust's `load_stats.csv`,
`load_failures.csv`, `load_stats_history.csv` and `load.html`, the service's log and
`verdict.json`. Exit code 0: passed; 1: failed; 2: bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# `python load/run.py` puts load/ first on sys.path; the project's package must win.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)
LOCUSTFILE = HERE / "locustfile.py"
CSV_PREFIX = "load"
AGGREGATED = "Aggregated"
_STATUS = re.compile(r"\b([1-5]\d\d)\b")


# ------------------------------------------------------------------ the verdict


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # "N/A" when nothing was measured
        return None


def check(stats_csv: Path, failures_csv: Path, max_p99_ms: float) -> dict[str, Any]:
    """The verdict on one run, from Locust's CSV files: passed, the figures, and why not.

    Locust counts a request as failed when the scenario says so (any status but the one
    expected) or the connection failed; the failure's text carries the status, so 5xx
    answers are counted apart from the rest.
    """
    with stats_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    total = next((row for row in rows if row["Name"] == AGGREGATED), None)
    if total is None:
        raise ValueError(f"{stats_csv} has no {AGGREGATED} row: not a Locust stats file")
    failures: list[dict[str, str]] = []
    if failures_csv.exists():
        with failures_csv.open(newline="") as handle:
            failures = list(csv.DictReader(handle))
    five_xx = 0
    for failure in failures:
        status = _STATUS.search(failure["Error"])
        if status and status.group(1).startswith("5"):
            five_xx += int(failure["Occurrences"])
    requests = int(total["Request Count"])
    failed = int(total["Failure Count"])
    p99 = _number(total["99%"])
    verdict: dict[str, Any] = {
        "requests": requests,
        "failures": failed,
        "five_xx": five_xx,
        "requests_per_s": round(float(total["Requests/s"]), 1),
        "p50_ms": _number(total["50%"]),
        "p95_ms": _number(total["95%"]),
        "p99_ms": p99,
        "max_p99_ms": max_p99_ms,
        "by_request": {
            row["Name"]: {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p99_ms": _number(row["99%"]),
            }
            for row in rows
            if row["Name"] != AGGREGATED
        },
    }
    reasons = []
    if requests == 0:
        reasons.append("no request was made")
    if five_xx:
        reasons.append(f"{five_xx} answers were 5xx")
    if failed > five_xx:
        reasons.append(f"{failed - five_xx} other requests failed (see load_failures.csv)")
    if p99 is not None and p99 > max_p99_ms:
        reasons.append(f"p99 {p99:g} ms is above the limit of {max_p99_ms:g} ms")
    verdict["passed"] = not reasons
    verdict["reasons"] = reasons
    return verdict


# ------------------------------------------------------------------ the run


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def records(settings: Any, count: int) -> list[dict[str, Any]]:
    """Contract-valid records from the project's generator, ids and all."""
    from pipeline.config import Generator
    from pipeline.generator import generate

    id_column, inputs = settings.contract.id_column, settings.model_inputs
    columns = [c for c in (id_column, *inputs) if c is not None]
    data = generate(Generator(rows=count, seed=7), settings.frames.count)
    return [
        {k: (str(v) if k == id_column else float(v)) for k, v in row.items()}
        for row in data[columns].to_dict("records")
    ]


def wait_ready(url: str, process: subprocess.Popen, workers: int, timeout: float) -> None:
    """Until `workers` distinct workers answered /readyz 200 (each loads its own model)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} before ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                seen.add(response.headers.get("x-crispml-worker", "single"))
        except OSError:
            pass
        if len(seen) >= workers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{len(seen)} of {workers} workers ready within {timeout:g} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="repository (default: here)")
    parser.add_argument("--workers", type=int, default=1, help="crispml serve --workers")
    parser.add_argument("--users", type=int, help="simulated clients (params: load.users)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second")
    parser.add_argument("--duration", type=int, help="seconds of load (load.duration_seconds)")
    parser.add_argument("--max-p99-ms", type=float, help="p99 limit (load.max_p99_ms)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback only")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temp folder)")
    parser.add_argument("--store-url", help="score store (default: the environment's)")
    parser.add_argument("--model-uri", help="as crispml serve --model-uri")
    parser.add_argument("--records", type=int, default=2000, help="distinct records to send")
    args = parser.parse_args(argv)
    if not is_loopback(args.host):
        parser.error(f"refusing --host {args.host}: only 127.0.0.1, ::1 or localhost")
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    from pipeline.config import find_root, load_settings

    root = find_root(args.root)
    settings = load_settings(root)
    params = settings.load
    users = args.users or params.users
    spawn_rate = args.spawn_rate or params.spawn_rate
    duration = args.duration or params.duration_seconds
    max_p99 = args.max_p99_ms or params.max_p99_ms
    if not 1 <= duration <= 3600 or users < 1:
        parser.error("--duration must be 1..3600 seconds and --users at least 1")
    out = (args.out or Path(tempfile.mkdtemp(prefix="crispml-load-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps(records(settings, args.records)))

    token = secrets.token_urlsafe(32)  # this run's admin token: labels need one
    host = args.host.strip("[]")
    port = free_port(host)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    env = {**os.environ, "CRISPML_API_TOKEN": token}
    env.pop("CRISPML_API_TOKENS", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if args.store_url:
        env["CRISPML_STORE_URL"] = args.store_url
    command = [
        sys.executable, "-m", "pipeline.cli", "serve", "--root", str(root),
        "--host", host, "--port", str(port), "--workers", str(args.workers),
    ]  # fmt: skip
    if args.model_uri:
        command += ["--model-uri", args.model_uri]
    with (out / "service.log").open("wb") as log:
        service = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(url, service, args.workers, timeout=180)
        locust = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", f"{spawn_rate:g}", "-t", f"{duration}s",
            "--stop-timeout", "10", "--host", url, "--only-summary",
            "--csv", str(out / CSV_PREFIX), "--html", str(out / "load.html"),
        ]  # fmt: skip
        load_env = {
            **os.environ,
            "CRISPML_LOAD_RECORDS": str(out / "records.json"),
            "CRISPML_LOAD_TOKEN": token,
        }
        with (out / "locust.log").open("wb") as log:
            done = subprocess.run(
                locust, env=load_env, stdout=log, stderr=subprocess.STDOUT,
                timeout=duration + 180, check=False,
            )  # fmt: skip
    finally:
        stop(service)
    stats = out / f"{CSV_PREFIX}_stats.csv"
    if not stats.exists():
        print(f"locust wrote no statistics (exit {done.returncode}); see {out / 'locust.log'}")
        return 1
    verdict = check(stats, out / f"{CSV_PREFIX}_failures.csv", max_p99)
    verdict = {
        "workers": args.workers,
        "users": users,
        "spawn_rate": spawn_rate,
        "duration_s": duration,
        "out": str(out),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **verdict,
    }
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2))
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
