"""Fixtures for the scoring service: a real MLflow registry, real servers, real stores.

* `model_registry` (session): built once by `registry_builder.py` in its own process -
  two registered versions of a small model with the tags `crispml register` sets, and
  aliases pointing at version 1.
* `Server`: `python -m pipeline.cli serve` (the real CLI, the real uvicorn) on a free
  loopback port, with its own throwaway repository (params.yaml + one environment
  overlay) and its own score store.
* `store_url` (parametrised): a fresh SQLite file, and the PostgreSQL named by
  CRISPML_TEST_DATABASE_URL (skipped, saying so, when unset). PostgreSQL is shared, so
  every test writes under its own environment name and deletes its rows afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

MAIN_ROOT = Path(__file__).resolve().parents[2]
BUILDER = Path(__file__).with_name("registry_builder.py")
# A token for tests only; real ones come from the environment of a deployment.
TOKEN = "service-tests-token-0123456789abcdef"
PG_ENV = "CRISPML_TEST_DATABASE_URL"
TEMPLATE_ENV = "dev"


@dataclass(frozen=True)
class Registry:
    folder: Path
    tracking_uri: str
    model_name: str
    versions: list[dict[str, Any]]
    records: list[dict[str, Any]]  # {"record": {...}, "label": 0|1}

    def version(self, number: int) -> dict[str, Any]:
        return next(v for v in self.versions if v["version"] == str(number))

    @property
    def history_url(self) -> str:
        """The store keeping the alias history of moves made outside a test's repository."""
        return f"sqlite:///{self.folder / 'aliases.db'}"

    def move_alias(self, alias: str, version: int, store_url: str | None = None) -> None:
        """Promote or roll back, the way `crispml register` does (alias history included).

        `store_url`: the store of the repository whose CLI reads the history afterwards;
        by default the registry's own.
        """
        from mlflow import MlflowClient

        from pipeline.registry import move_alias
        from pipeline.store import ScoreStore

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        store = ScoreStore(store_url or self.history_url)
        try:
            store.migrate()
            move_alias(client, store, self.model_name, alias, str(version), reason="service test")
        finally:
            store.dispose()


@pytest.fixture(scope="session")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    folder = tmp_path_factory.mktemp("registry")
    done = subprocess.run(
        [sys.executable, str(BUILDER), str(folder)], capture_output=True, text=True, cwd=folder
    )
    assert done.returncode == 0, f"registry builder failed:\n{done.stderr[-4000:]}"
    built = json.loads((folder / "registry.json").read_text())
    return Registry(
        folder=folder,
        tracking_uri=built["tracking_uri"],
        model_name=built["model_name"],
        versions=built["versions"],
        records=json.loads((folder / "records.json").read_text()),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it: mappings merge key by key, the rest replaces."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class ConstantModel:
    """A stand-in model: every record scores 0.3, so a test needs no registry or training."""

    def predict_proba(self, frame: Any) -> Any:
        import numpy as np

        return np.tile([0.7, 0.3], (len(frame), 1))


def app_serving_constant(root: Path, config: Any) -> Any:
    """The app of `root` serving `ConstantModel`: its store migrated, nothing else loaded."""
    from pipeline.config import load_settings
    from pipeline.service.app import create_app
    from pipeline.service.model import ServingModel
    from pipeline.store import utcnow

    app = create_app(load_settings(root), config)
    state = app.state.service
    state.store.migrate()
    state.models.current = ServingModel(
        model=ConstantModel(),
        name="fraud",
        version="1",
        run_id="r",
        threshold=0.5,
        git_commit="c",
        uri="test:constant",
        loaded_at=utcnow(),
    )
    state.prepared = True  # the lifespan must not look for a registry
    return app


def make_repo(
    folder: Path,
    *,
    env: str,
    store_url: str,
    alias: str = "dev",
    privacy: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """A minimal repository: params.yaml naming `env`, and that environment's overlay.

    `params` is laid over the repository's params.yaml (e.g. another contract).
    """
    folder.mkdir(parents=True, exist_ok=True)
    text = (MAIN_ROOT / "params.yaml").read_text()
    if params:
        merged = _merge(yaml.safe_load(text), {**params, "env": env})
        (folder / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    else:
        (folder / "params.yaml").write_text(re.sub(r"(?m)^env:.*$", f"env: {env}", text, count=1))
    template = MAIN_ROOT / "environments" / TEMPLATE_ENV / "params.yaml"
    overlay = yaml.safe_load(template.read_text())
    overlay["store"] = {"url": store_url}
    overlay["registry"] = {"alias": alias}
    overlay["privacy"] = {**overlay.get("privacy", {}), **(privacy or {})}
    target = folder / "environments" / env
    target.mkdir(parents=True, exist_ok=True)
    (target / "params.yaml").write_text(yaml.safe_dump(overlay))
    return folder


class Server:
    """`crispml serve` in a subprocess on a free port; stopped with SIGTERM (graceful)."""

    def __init__(
        self,
        root: Path,
        registry: Registry | None,
        *,
        env_vars: dict[str, str] | None = None,
        model_uri: str | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRISPML_", "MLFLOW_"))}
        if registry is not None:  # None: a local model folder, no registry at all
            env["MLFLOW_TRACKING_URI"] = registry.tracking_uri
        env.update(env_vars or {})
        self.env = env
        self.command = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--root",
            str(root),
            "--port",
            str(self.port),
        ]
        if model_uri:
            self.command += ["--model-uri", model_uri]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.root,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 90.0) -> Server:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_servers(*servers: Server) -> None:
    """Start several servers at once (each loads MLflow and a model), then wait for all."""
    for server in servers:
        server.start()
    for server in servers:
        server.wait_ready()


def unique_env(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def delete_environment(url: str, environment: str) -> None:
    from pipeline.store import make_engine
    from pipeline.store.schema import labels, scores

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(scores).where(scores.c.environment == environment))
            conn.execute(sa.delete(labels).where(labels.c.environment == environment))
    except sa.exc.SQLAlchemyError:
        pass  # the tables were never created
    finally:
        engine.dispose()


def _postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL to test the store against")
    return url


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL per backend; PostgreSQL rows are removed by the test's environment name."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scores.db'}"
    else:
        yield _postgres_url()


def sample_records(registry: Registry, count: int, start: int = 0) -> list[dict[str, Any]]:
    return [item["record"] for item in registry.records[start : start + count]]
