"""Benchmark: `crispml serve` (stores every score) against `mlflow models serve` (stores nothing).

Both servers serve the same registered model version, on loopback, one after the
other (never at the same time, so they do not compete for the cores). For each, a
light asyncio HTTP/1.1 client with keep-alive connections sends single-record scoring
requests at concurrency 1 and 8 and measures throughput and latency percentiles.
After our run, the score store is counted: every 200 must be a stored row.

    # a repository with a registered model (the environment's alias is served):
    python bench/serve.py --root .
    # or build a throwaway one with the real pipeline on small data first (about 45 s):
    python bench/serve.py --demo
    # 1, 2 and 3 worker processes (`crispml serve --workers N`) against PostgreSQL:
    python bench/serve.py --demo --workers 1 2 3 --skip-mlflow \
        --store-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

Prints one JSON document. Targets (2 cores): our throughput >= MLflow's at each
concurrency while storing every score, and our p99 at concurrency 8 below 50 ms.

On a machine shared with other work, throughput and latency follow the neighbours' load
(the same code measured twice can differ by half). `server_cpu_ms_per_request`, the CPU
time our server process spent per answered request, depends far less on them: compare
that figure when judging a change of our code on a busy machine.

With `--workers`, our server runs once per worker count (one after the other), each
against the same store; several workers need a PostgreSQL `--store-url`. The stored
count is checked per run, as the difference of the environment's online scores before
and after it, so point the bench at a database where nothing else scores the same
environment meanwhile. `server_cpu_ms_per_request` then adds up the CPU of the
supervisor and all its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# `python bench/serve.py` puts bench/ first on sys.path, where a sibling benchmark may be
# called pipeline.py; the project's package must win.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
DEMO_FILES = ("pipeline", "params.yaml", "dvc.yaml", "environments", "pyproject.toml")
DEMO_STAGES = ("ingest", "prepare", "curate", "train", "report", "register")


# ------------------------------------------------------------------ a tiny HTTP/1.1 client


def _request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


async def _client(
    host: str, port: int, requests: list[bytes], latencies: list[float], failures: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for raw in requests:
            started = time.perf_counter()
            writer.write(raw)
            status, _body = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failures.append(status)
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of a process and of its living descendants (the workers of a
    supervisor): what the whole server spent, however many processes it runs."""
    total = cpu_seconds(pid)
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in listing.read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # exited
                total += tree_cpu_seconds(int(child))
    return total


async def _load(host: str, port: int, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    per_client = [bodies[i::concurrency] for i in range(concurrency)]
    latencies: list[float] = []
    failures: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(host, port, chunk, latencies, failures) for chunk in per_client))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)

    return {
        "requests": len(latencies),
        "non_200": len(failures),
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def run_load(
    host: str,
    port: int,
    path: str,
    payloads: list[bytes],
    total: int,
    concurrency: int,
    warmup: int,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """The load figures of `total` requests after `warmup`; with `server_pid`, also the
    CPU time the server (with its worker processes) spent per request."""
    bodies = [_request(host, port, path, payloads[i % len(payloads)]) for i in range(total)]
    warm = [_request(host, port, path, payloads[i % len(payloads)]) for i in range(warmup)]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(_load(host, port, warm, concurrency))
    before = tree_cpu_seconds(server_pid) if server_pid is not None else 0.0
    result = runner(_load(host, port, bodies, concurrency))
    if server_pid is not None:
        spent = tree_cpu_seconds(server_pid) - before
        result["server_cpu_ms_per_request"] = round(spent / result["requests"] * 1000, 3)
    return result


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def wait_workers(url: str, process: subprocess.Popen, workers: int, timeout: float = 120.0) -> None:
    """Until `workers` distinct worker processes answered ready (each loads its own model);
    every request opens a new connection, which any worker may accept."""
    if workers < 2:
        return
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                seen.add(response.headers.get("x-crispml-worker", ""))
        except OSError:
            pass
        time.sleep(0.05)
    if len(seen) < workers:
        raise RuntimeError(f"only {len(seen)} of {workers} workers answered within {timeout} s")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # A new session, so stopping it also stops the workers it spawns (mlflow does).
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ------------------------------------------------------------------ model and data


def build_demo(folder: Path) -> Path:
    """A throwaway copy of the project, run through the real pipeline on small data."""
    for name in DEMO_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    params = (folder / "params.yaml").read_text()
    params = params.replace("  rows: 284807", "  rows: 6000").replace(
        "  fraud_rate: 0.00172", "  fraud_rate: 0.03"
    )
    (folder / "params.yaml").write_text(params)
    # The demo registers into its own throwaway registry, never into a configured one.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    for stage in DEMO_STAGES:
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", stage, "--root", str(folder)],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=folder,
        )
    return folder


def records(settings: Any, count: int) -> list[dict[str, Any]]:
    """Contract-valid records from the project's generator (frames the model did not see)."""
    from pipeline.config import Generator
    from pipeline.generator import generate

    contract = settings.contract
    id_column, inputs = contract.id_column, settings.model_inputs
    data = generate(Generator(rows=count, seed=99), settings.frames.count)
    out = []
    for row in data[[id_column, *inputs]].to_dict("records"):
        out.append({k: (str(v) if k == id_column else float(v)) for k, v in row.items()})
    return out


# ------------------------------------------------------------------ our server


def run_ours(
    args: argparse.Namespace,
    root: Path,
    host: str,
    env: dict[str, str],
    workdir: Path,
    store_url: str,
    environment: str,
    name: str,
    version: str,
    workers: int,
    payloads: list[bytes],
) -> dict[str, Any]:
    """Every concurrency level against `crispml serve --workers <workers>`, then the
    store's count of what that run stored against what it answered."""
    from pipeline.store import ScoreStore

    def stored_now() -> int:
        store = ScoreStore(store_url)
        try:
            store.migrate()
            return store.count_scores(channel="api", environment=environment, shadow=False)
        finally:
            store.dispose()

    before = stored_now()
    out: dict[str, Any] = {"workers": workers}
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        "--root",
        str(root),
        "--port",
        str(port),
        "--model-uri",
        f"models:/{name}/{version}",
        "--workers",
        str(workers),
    ]
    ours = start(command, env, workdir / f"crispml-w{workers}.log")
    try:
        wait_http(f"http://{host}:{port}/readyz", ours)
        wait_workers(f"http://{host}:{port}/readyz", ours, workers)
        sent = 0
        for level in args.concurrency:
            out[f"c{level}"] = run_load(
                host,
                port,
                "/v1/score",
                payloads,
                args.requests,
                level,
                args.warmup,
                server_pid=ours.pid,
            )
            sent += args.requests + args.warmup
    finally:
        stop(ours)
    stored = stored_now() - before
    answered = sum(
        out[f"c{level}"]["requests"] - out[f"c{level}"]["non_200"] for level in args.concurrency
    ) + args.warmup * len(args.concurrency)
    out["stored_scores"] = stored
    out["answered_200"] = answered
    out["every_answer_stored"] = answered <= stored <= sent
    return out


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="repository with a registered model")
    parser.add_argument("--demo", action="store_true", help="build a small throwaway model first")
    parser.add_argument("--requests", type=int, default=3000, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="worker counts of `crispml serve --workers N` to measure, one after the other",
    )
    parser.add_argument(
        "--store-url",
        help="score store for our server (default: a throwaway SQLite file); "
        "PostgreSQL is needed for more than one worker",
    )
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument(
        "--mlflow-omp1",
        action="store_true",
        help="also run MLflow with OMP_NUM_THREADS=1 (our service's setting), for fairness",
    )
    args = parser.parse_args(argv)
    if not args.root and not args.demo:
        parser.error("give --root (a repository with a registered model) or --demo")
    if max(args.workers) > 1 and not (args.store_url or "").startswith("postgresql"):
        parser.error("--workers above 1 needs --store-url postgresql+psycopg://...")

    workdir = Path(tempfile.mkdtemp(prefix="crispml-bench-"))
    root = build_demo(workdir / "repo") if args.demo else args.root.resolve()

    from pipeline import registry, tracking
    from pipeline.config import load_settings

    settings = load_settings(root)
    client = tracking.configure(settings)
    name, alias = settings.registration.model_name, settings.alias
    holder = registry.alias_holder(client, name, alias)
    if holder is None:
        raise SystemExit(f"no version of {name} holds @{alias} in {settings.tracking_uri}")
    version = str(holder.version)
    data = records(settings, 2000)
    inputs = settings.model_inputs
    ours_payloads = [json.dumps(r).encode() for r in data]
    mlflow_payloads = [
        json.dumps({"dataframe_records": [{k: r[k] for k in inputs}]}).encode() for r in data
    ]
    store_url = args.store_url or f"sqlite:///{workdir / 'bench-scores.db'}"
    base_env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "CRISPML_STORE_URL": store_url,
    }
    base_env.pop("CRISPML_SCORE_REQUIRES_TOKEN", None)
    host = "127.0.0.1"
    result: dict[str, Any] = {
        "model": f"models:/{name}/{version}",
        "algorithm": holder.tags.get("algorithm"),
        "cpus": os.cpu_count(),
        # Other work on the machine skews both sides: say how busy it was.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "requests_per_level": args.requests,
    }

    for workers in args.workers:
        # One worker keeps the key of earlier results; more get their own.
        key = "crispml" if args.workers == [1] else f"crispml_w{workers}"
        result[key] = run_ours(
            args,
            root,
            host,
            base_env,
            workdir,
            store_url,
            settings.env,
            name,
            version,
            workers,
            ours_payloads,
        )

    variants = [] if args.skip_mlflow else [("mlflow", {})]
    if args.mlflow_omp1 and not args.skip_mlflow:
        variants.append(("mlflow_omp1", {"OMP_NUM_THREADS": "1"}))
    for label, extra in variants:
        port = free_port()
        server = start(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/{name}/{version}",
                "--env-manager",
                "local",
                "-h",
                host,
                "-p",
                str(port),
            ],
            {**base_env, **extra},
            workdir / f"{label}.log",
        )
        result[label] = {}
        try:
            wait_http(f"http://{host}:{port}/ping", server)
            for level in args.concurrency:
                result[label][f"c{level}"] = run_load(
                    host, port, "/invocations", mlflow_payloads, args.requests, level, args.warmup
                )
        finally:
            stop(server)

    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    verdict: dict[str, Any] = {}
    first = "crispml" if args.workers == [1] else f"crispml_w{args.workers[0]}"
    for label, _extra in variants:
        for level in args.concurrency:
            ours = result[first][f"c{level}"]["throughput_rps"]
            theirs = result[label][f"c{level}"]["throughput_rps"]
            verdict[f"throughput_ratio_vs_{label}_c{level}"] = round(ours / theirs, 2)
    if verdict:
        result["verdict"] = verdict
    if 8 in args.concurrency and "crispml" in result:
        result.setdefault("verdict", {})["p99_c8_below_50ms"] = (
            result["crispml"]["c8"]["p99_ms"] < 50
        )
    if len(args.workers) > 1:
        result["by_workers"] = {
            str(w): {
                f"c{level}": {
                    "throughput_rps": result[f"crispml_w{w}"][f"c{level}"]["throughput_rps"],
                    "p99_ms": result[f"crispml_w{w}"][f"c{level}"]["p99_ms"],
                }
                for level in args.concurrency
            }
            for w in args.workers
        }
    print(json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
