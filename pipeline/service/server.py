"""`crispml serve`: load settings, prepare the service, run uvicorn.

The process is set up for serving before anything heavy is imported: one OpenMP and
BLAS thread per process. On a small machine, scikit-learn's default of one thread per
core made a single-row `predict_proba` of the gradient-boosted model 2.5 times slower
(7.7 ms against 3.0 ms median) with 100 ms spikes, because every call woke and synced
a thread team. Throughput comes from batching concurrent requests and from more
replicas, not from threads inside one tiny prediction. An explicit OMP_NUM_THREADS
(or the BLAS equivalents) still wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
) -> None:
    """Start the service in the foreground; CrispError on a bad configuration or store."""
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
    for variable, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(variable, value)

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
