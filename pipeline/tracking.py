"""MLflow set-up and the lineage facts every run and every score carries.

The embedded default is `sqlite:///mlflow.db` at the repository root with artifacts
in `mlartifacts/`; `MLFLOW_TRACKING_URI` points everything at a team server instead.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Settings

UNKNOWN_COMMIT = "unknown"


def git_commit(root: Path) -> str:
    """The commit being built: CI's variable when there is one, else the work tree's HEAD."""
    for variable in ("CI_COMMIT_SHA", "CRISPML_GIT_COMMIT"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN_COMMIT


# What a run writes itself (DVC's lock and uncached outputs) is not a dirty input.
_OUTPUTS = (":(exclude)dvc.lock", ":(exclude)reports")


def git_dirty(root: Path) -> bool | None:
    """Whether the inputs differ from the commit. The `env:` line that CI sets in
    params.yaml (`crispml env use`) and the pipeline's own outputs do not count, so a
    CI run of a clean commit is tagged clean."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    try:
        changed = git("diff", "HEAD", "--name-only", "--", ".", *_OUTPUTS).split()
        if "params.yaml" in changed:
            edits = [
                line
                for line in git("diff", "HEAD", "-U0", "--", "params.yaml").splitlines()
                if line[:1] in "+-" and not line.startswith(("+++", "---"))
            ]
            if all(line[1:].startswith("env:") for line in edits):
                changed.remove("params.yaml")
        return bool(changed)
    except (OSError, subprocess.CalledProcessError):
        return None


def dvc_hashes(
    root: Path, stages: tuple[str, ...] = ("ingest", "prepare", "curate", "train")
) -> dict[str, str]:
    """md5 of each output of the data stages, as dvc.lock records them: the data's identity."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out: dict[str, str] = {}
    for name in stages:
        for item in (data.get("stages", {}).get(name) or {}).get("outs", []):
            if "md5" in item:
                out[item["path"]] = item["md5"]
    return out


def runtime_facts() -> dict[str, str]:
    import sklearn

    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "sklearn": sklearn.__version__,
    }


def configure(settings: Settings) -> Any:
    """Point MLflow at the configured store; returns a client for registry calls."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(settings: Settings) -> str:
    """Create the experiment once; with the embedded store its artifacts go to mlartifacts/.

    The test is on the URI, not on whether MLFLOW_TRACKING_URI is set: MLflow itself
    exports that variable on `set_tracking_uri`, and MLflow's own default artifact root
    would be `./mlruns` in whatever directory the process happens to run in.
    """
    import mlflow

    name = settings.registration.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.tracking_uri == settings.embedded_tracking_uri:
        location = (settings.root / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def pointed_at(uri: str) -> Iterator[str]:
    """MLflow's process-wide tracking and registry URI set to `uri` only inside the block.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI
    into os.environ, so code that runs a throwaway registry in-process (replay, tests)
    would otherwise leave every later client and subprocess pointed at it.
    """
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    # Set, not only exported: a URI set earlier in the process outranks the variable.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
