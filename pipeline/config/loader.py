"""Loading `params.yaml` plus the active environment's overlay into one typed `Settings`.

This is the only place that reads YAML. Everything else receives a `Settings` object,
so a typo in a key fails loudly here, once, with the key named, instead of surfacing
as a KeyError deep inside a stage. Rules that span two sections (the split against
the training frames, a transform against the contract) are checked here too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.config.contract import NUMERIC, Contract, Role, Strict
from pipeline.config.environment import Environment
from pipeline.config.params import (
    ContinuousTraining,
    Curate,
    Frames,
    Generator,
    Label,
    LabelSource,
    Load,
    Monitoring,
    Prepare,
    Register,
    Report,
    Score,
    Train,
    Verify,
)
from pipeline.errors import ConfigError

PARAMS_FILE = "params.yaml"
ENV_PARAMS_FILE = "params.yaml"
ENVIRONMENTS_DIR = "environments"

# Environment variables that may override a configured value. Credentials only
# ever arrive this way; they are never read from a committed file.
ENV_STORE_URL = "CRISPML_STORE_URL"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"


class Settings(Strict):
    """Everything a stage needs, loaded once at the entry point."""

    env: str
    root: Path
    contract: Contract
    frames: Frames
    generator: Generator
    prepare: Prepare
    curate: Curate
    train: Train
    report: Report
    registration: Register = Field(alias="register")
    score: Score
    label: Label
    verify: Verify
    continuous_training: ContinuousTraining = ContinuousTraining()
    monitoring: Monitoring = Monitoring()
    load: Load = Load()
    environment: Environment

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        contract = self.contract
        split_frames = {*self.curate.split.train, *self.curate.split.valid, *self.curate.split.test}
        if split_frames != set(self.frames.train):
            raise ValueError(
                f"curate.split frames {sorted(split_frames)} must be exactly frames.train "
                f"{sorted(self.frames.train)}"
            )
        specs = contract.by_name
        time = contract.time_column
        if self.frames.by == "period" and (time is None or specs[time].dtype != "datetime"):
            raise ValueError("frames.by 'period' needs a datetime time column in the contract")
        for item in self.report.slices:
            spec = specs.get(item.column)
            if spec is None:
                raise ValueError(f"report.slices names {item.column!r}, not in the contract")
            if item.edges is not None and spec.dtype not in NUMERIC:
                raise ValueError(f"report.slices {item.column!r}: edges need a numeric column")
        for column in self.environment.privacy.generalise:
            if column not in contract.names(Role.QUASI_IDENTIFIER):
                raise ValueError(f"privacy.generalise names {column!r}, not a quasi_identifier")
        features = self.curate.features
        for column in features.log:
            spec = specs.get(column)
            if spec is None or spec.role != Role.FEATURE or spec.dtype not in NUMERIC:
                raise ValueError(f"curate.features.log names {column!r}, not a numeric feature")
            if spec.min is None or spec.min < 0:
                raise ValueError(
                    f"curate.features.log {column!r}: the contract must give it min >= 0"
                )
        if features.time_of_day is not None:
            spec = specs.get(features.time_of_day)
            if spec is None or spec.role not in (Role.TIME, Role.FEATURE):
                raise ValueError(
                    f"curate.features.time_of_day names {features.time_of_day!r}, "
                    "not the time column or a feature"
                )
            if spec.dtype != "datetime" and not (spec.dtype in NUMERIC and spec.unit == "seconds"):
                raise ValueError(
                    f"curate.features.time_of_day {spec.name!r} must be a datetime, or a number "
                    "with unit: seconds in the contract"
                )
            if spec.dtype == "datetime" and spec.nullable:
                # The model turns a datetime into its nanoseconds with numpy, where a
                # missing one (NaT) would be a date in 1677, not a gap.
                raise ValueError(
                    f"curate.features.time_of_day {spec.name!r} is a nullable datetime: "
                    "make it required in the contract, or leave time_of_day unset"
                )
        return self

    @property
    def model_inputs(self) -> list[str]:
        """What the model sees: the features, plus a time column a transform reads."""
        inputs = list(self.contract.features)
        extra = self.curate.features.time_of_day
        if extra is not None and extra not in inputs:
            inputs.insert(0, extra)
        return inputs

    @property
    def label_source(self) -> LabelSource:
        return self.label.source

    @property
    def store_url(self) -> str:
        url = os.environ.get(ENV_STORE_URL) or self.environment.store.url
        return resolve_sqlite_url(url, self.root)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get(ENV_MLFLOW_URI) or self.embedded_tracking_uri

    @property
    def embedded_tracking_uri(self) -> str:
        """The no-server default: a SQLite registry beside params.yaml."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def alias(self) -> str:
        return self.environment.registry.alias

    def flat_params(self) -> dict[str, str]:
        """Params as flat `a.b.c` keys, for MLflow and for diffs people can read."""
        data = self.model_dump(mode="json", exclude={"root"}, by_alias=True)
        out: dict[str, str] = {}
        _flatten(data, "", out)
        return out


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = str(value)


def resolve_sqlite_url(url: str, root: Path) -> str:
    """Relative SQLite paths are relative to the repository, not to the caller's cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((root / url[len(prefix) :]).resolve())
    return url


def find_root(start: Path | None = None) -> Path:
    """The repository root is the nearest folder holding params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    raise ConfigError(f"no {PARAMS_FILE} found in {here} or any parent folder")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _format_validation(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        value = item.get("input")
        if isinstance(value, str) and "://" in value:
            from pipeline.redaction import redact_url

            value = redact_url(value)  # the error names the URL, never its password
        shown = "" if isinstance(value, dict | list) else f" (value: {value!r})"
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def environment_path(root: Path, env: str) -> Path:
    return root / ENVIRONMENTS_DIR / env / ENV_PARAMS_FILE


def load_settings(root: Path | None = None, env: str | None = None) -> Settings:
    """Load params.yaml and the active environment's overlay into one typed object."""
    root = (root or find_root()).resolve()
    params = read_yaml(root / PARAMS_FILE)
    env = env or params.get("env")
    if not isinstance(env, str) or not env:
        raise ConfigError(f"{root / PARAMS_FILE}: key 'env' must name an environment")
    env_file = environment_path(root, env)
    if not env_file.is_file():
        known = sorted(p.name for p in (root / ENVIRONMENTS_DIR).glob("*/") if p.is_dir())
        raise ConfigError(f"environment {env!r} has no {env_file} (known: {known})")
    overlay = read_yaml(env_file)
    try:
        environment = Environment.model_validate(overlay)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, str(env_file))) from None
    body = {k: v for k, v in params.items() if k != "env"}
    try:
        return Settings.model_validate(
            {**body, "env": env, "root": root, "environment": environment}
        )
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, str(root / PARAMS_FILE))) from None
