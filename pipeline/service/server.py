"""`crispml serve`: load settings, prepare the service, run uvicorn.

The process is set up for serving before anything heavy is imported: one OpenMP and
BLAS thread per process. On a small machine, scikit-learn's default of one thread per
core made a single-row `predict_proba` of the gradient-boosted model 2.5 times slower
(7.7 ms against 3.0 ms median) with 100 ms spikes, because every call woke and synced
a thread team. Throughput comes from batching concurrent requests and from more
replicas, not from threads inside one tiny prediction. An explicit OMP_NUM_THREADS
(or the BLAS equivalents) still wins.

`--workers N` (N > 1) runs N worker processes on one port with uvicorn's own
supervisor (the one `uvicorn --workers` uses: it restarts a worker that dies and stops
everything when one cannot start). Each worker builds its own app from
`worker_app`, so each has its own model, micro-batchers and store connections; the
kernel spreads connections over them. Before any worker starts, this process checks
the configuration as a single server would and migrates the store once. Workers share
one folder for the duration of the run: prometheus_client's multiprocess files (so
/metrics counts every worker) and the admin-reload broadcast (`ReloadBroadcast`). Only
PostgreSQL is accepted as the store: SQLite takes one writer at a time, and N
group-committing writers would queue on its lock.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# MLflow's HTTP client by default retries 7 times with a backoff factor of 2 and a 120 s
# timeout: against a registry that is down, one call took 106 s. The service polls the
# registry again anyway, so each of its calls should fail fast; an explicit value wins.
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
ENV_VARIABLE = "CRISPML_ENV"
# What the supervisor hands its workers (spawned processes inherit the environment).
WORKER_SPEC = "CRISPML_SERVE_WORKER_SPEC"
WORKER_HEADER = b"x-crispml-worker"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"

log = logging.getLogger("pipeline.service")


def _environment() -> str | None:
    """CRISPML_ENV if given; set but empty is an error (a pod whose label is missing)."""
    if ENV_VARIABLE not in os.environ:
        return None
    value = os.environ[ENV_VARIABLE].strip()
    if not value:
        from pipeline.errors import ConfigError

        raise ConfigError(
            f"{ENV_VARIABLE} is set but empty (in Kubernetes: the pod has no "
            "crispml.io/environment label); refusing to guess which environment to serve"
        )
    return value


def run(
    root: Path | None,
    host: str,
    port: int,
    model_uri: str | None = None,
    log_level: str = "info",
    workers: int = 1,
) -> None:
    """Start the service in the foreground; CrispError on a bad configuration or store."""
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
    for variable, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(variable, value)
    if workers > 1:
        _run_workers(root, host, port, model_uri, log_level, workers)
        return

    import prometheus_client
    import uvicorn

    # One `_created` gauge per series doubles /metrics for nothing Prometheus needs.
    prometheus_client.disable_created_metrics()

    from pipeline.config import find_root, load_settings
    from pipeline.service.app import create_app
    from pipeline.service.config import ServiceConfig

    # In a container every environment runs the same image and params.yaml: the pod says
    # which environment it serves (the CI's variable of the same name).
    settings = load_settings(find_root(root), env=_environment())
    config = ServiceConfig.from_env()
    app = create_app(settings, config, model_uri)
    state = app.state.service
    # Before uvicorn: a store or pinned model that cannot work fails here, with a CLI error
    # and exit code, rather than as a traceback inside uvicorn's lifespan. A model named
    # by an alias loads in the background once listening (unready until then).
    state.prepare()
    current = state.models.current
    log.info(
        "environment %s, model %s, store %s, listening on http://%s:%d (docs at /docs)",
        settings.env,
        f"{current.name} version {current.version}" if current else "(loading in the background)",
        state.store.safe_url,
        host,
        port,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # Requests are counted and timed in /metrics; a log line per request would cost
        # more than the scoring itself.
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
    )


class WorkerHeader:
    """Names the worker process in every answer (`x-crispml-worker: <pid>`).

    A plain ASGI wrapper, not in the OpenAPI schema: it lets an operator or a test tell
    which of the workers behind one port answered, e.g. which version each one serves.
    """

    def __init__(self, app: Any, value: bytes) -> None:
        self.app = app
        self.value = value

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (WORKER_HEADER, self.value)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, named)


def _refuse_sqlite(store_url: str, workers: int) -> None:
    import sqlalchemy as sa

    from pipeline.errors import ConfigError
    from pipeline.redaction import redact_url

    url = sa.make_url(store_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"--workers {workers} needs a PostgreSQL score store, but the store URL is "
            f"{'SQLite' if url.get_backend_name() == 'sqlite' else url.get_backend_name()} "
            f"({redact_url(store_url)}): SQLite takes one writer at a time. Set store.url "
            "(or CRISPML_STORE_URL) to postgresql+psycopg://..., or serve with --workers 1"
        )


def _run_workers(
    root: Path | None,
    host: str,
    port: int,
    model_uri: str | None,
    log_level: str,
    workers: int,
) -> None:
    """The supervisor: check and migrate once, then run `workers` copies of the app."""
    # The workers' metrics live in a fresh folder of this run: files left by another run
    # would be added to this one's counts. This process itself keeps its own in memory.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from pipeline.config import find_root, load_settings
    from pipeline.errors import CrispError
    from pipeline.redaction import redact_url
    from pipeline.service.app import create_app
    from pipeline.service.config import ServiceConfig

    settings = load_settings(find_root(root), env=_environment())
    _refuse_sqlite(settings.store_url, workers)
    config = ServiceConfig.from_env()
    # Everything a single server checks before listening, once: the configuration, a
    # pinned model, and the store migration (which the workers then skip, so they never
    # race for it; on PostgreSQL it holds an advisory lock besides).
    app = create_app(settings, config, model_uri)
    state = app.state.service
    try:
        state.prepare()
    finally:
        state.store.dispose()
    del app, state
    shared = Path(tempfile.mkdtemp(prefix="crispml-serve-"))
    try:
        (shared / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared / "metrics")
        os.environ[WORKER_SPEC] = json.dumps(
            {
                "root": str(settings.root),
                "model_uri": model_uri,
                "shared": str(shared),
                "log_level": logging.getLogger().getEffectiveLevel(),
            }
        )
        log.info(
            "environment %s, store %s, %d workers listening on http://%s:%d (docs at /docs)",
            settings.env,
            redact_url(settings.store_url),
            workers,
            host,
            port,
        )
        server_config = uvicorn.Config(
            f"{__name__}:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=30,
            server_header=False,
        )
        sock = server_config.bind_socket()
        supervisor = Multiprocess(server_config, sockets=[sock])
        try:
            supervisor.run()
        finally:
            sock.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise CrispError("a worker failed to start (its log is above); stopped them all")


def worker_app() -> Any:
    """The app of one worker process of `crispml serve --workers N` (uvicorn's factory)."""
    spec = json.loads(os.environ[WORKER_SPEC])
    logging.basicConfig(level=spec["log_level"], format=LOG_FORMAT, stream=sys.stderr)
    import prometheus_client

    prometheus_client.disable_created_metrics()

    from pipeline.config import load_settings
    from pipeline.service.app import create_app
    from pipeline.service.config import ServiceConfig

    settings = load_settings(Path(spec["root"]), env=_environment())
    app = create_app(settings, ServiceConfig.from_env(), spec["model_uri"])
    state = app.state.service
    state.prepare(migrate=False)
    state.share_reloads(Path(spec["shared"]) / "reload")
    app.add_middleware(WorkerHeader, value=str(os.getpid()).encode())
    return app
