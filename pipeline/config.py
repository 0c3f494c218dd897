"""Typed configuration: `params.yaml` plus the active environment's overlay.

This is the only module that reads YAML. Everything else receives a `Settings`
object, so a typo in a key fails loudly here, once, with the key named, instead
of surfacing as a KeyError deep inside a stage.

Two files make the configuration, and DVC tracks keys of both:

* `params.yaml` holds what is promoted as code from dev to qa to prod: the data
  contract, frames, algorithms and hyperparameters, costs. Its key `env` names the
  active environment.
* `environments/<env>/params.yaml` holds what differs per environment: data
  access, the privacy filter, gates, the registry alias, the score store and the
  DVC remote.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

PARAMS_FILE = "params.yaml"
ENV_PARAMS_FILE = "params.yaml"
ENVIRONMENTS_DIR = "environments"

# Environment variables that may override a configured value. Credentials only
# ever arrive this way; they are never read from a committed file.
ENV_STORE_URL = "CRISPML_STORE_URL"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- contract


class Role(StrEnum):
    FEATURE = "feature"
    TARGET = "target"
    TIME = "time"
    ID = "id"
    DIRECT_IDENTIFIER = "direct_identifier"
    QUASI_IDENTIFIER = "quasi_identifier"


DType = Literal["float", "int", "string", "bool"]


class ColumnRule(_Strict):
    """One column of the data contract (or several sharing one rule via `names`)."""

    name: str | None = None
    names: list[str] | None = None
    role: Role
    dtype: DType
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    nullable: bool = False
    unique: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _one_of_name_or_names(self) -> ColumnRule:
        if (self.name is None) == (self.names is None):
            raise ValueError("a contract entry needs exactly one of 'name' or 'names'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def expand(self) -> list[ColumnSpec]:
        names = [self.name] if self.name is not None else list(self.names or [])
        data = self.model_dump(exclude={"name", "names"})
        return [ColumnSpec(name=n, **data) for n in names]


class ColumnSpec(_Strict):
    name: str
    role: Role
    dtype: DType
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    nullable: bool = False
    unique: bool = False
    description: str = ""


class Contract(_Strict):
    """Columns, roles, types and allowed ranges: what any source must deliver."""

    columns: list[ColumnRule]

    @model_validator(mode="after")
    def _roles_are_complete(self) -> Contract:
        specs = self.specs
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise ValueError(f"column {spec.name!r} is declared twice")
            seen.add(spec.name)
        for role in (Role.TARGET, Role.ID, Role.TIME):
            found = [s.name for s in specs if s.role == role]
            if len(found) != 1:
                raise ValueError(
                    f"the contract needs exactly one {role.value} column, found {found}"
                )
        if not any(s.role == Role.FEATURE for s in specs):
            raise ValueError("the contract needs at least one feature column")
        return self

    @cached_property
    def specs(self) -> list[ColumnSpec]:
        # Cached: the service asks for it on every request (the model is frozen).
        return [spec for rule in self.columns for spec in rule.expand()]

    def names(self, role: Role) -> list[str]:
        return [s.name for s in self.specs if s.role == role]

    @property
    def target(self) -> str:
        return self.names(Role.TARGET)[0]

    @property
    def id_column(self) -> str:
        return self.names(Role.ID)[0]

    @property
    def time_column(self) -> str:
        return self.names(Role.TIME)[0]

    @property
    def features(self) -> list[str]:
        return self.names(Role.FEATURE)

    @property
    def model_inputs(self) -> list[str]:
        """What the model sees: the time column (for time-of-day) and the features."""
        return [self.time_column, *self.features]


# --------------------------------------------------------------------------- params.yaml


class Frames(_Strict):
    count: int = Field(12, ge=1)
    train: list[int]
    score: list[int]

    @model_validator(mode="after")
    def _frames_in_range(self) -> Frames:
        for key in ("train", "score"):
            for frame in getattr(self, key):
                if not 1 <= frame <= self.count:
                    raise ValueError(f"frames.{key} has frame {frame}, outside 1..{self.count}")
        overlap = set(self.train) & set(self.score)
        if overlap:
            raise ValueError(f"frames {sorted(overlap)} are both trained on and scored")
        return self


class Drift(_Strict):
    """Synthetic drift, so that drift detection can be demonstrated and tested."""

    start_frame: int | None = Field(None, ge=1)
    columns: list[str] = []
    feature_shift: float = 0.0
    amount_scale: float = 1.0
    fraud_pattern_change: float = Field(0.0, ge=0.0, le=1.0)


class Generator(_Strict):
    rows: int = Field(284_807, ge=1)
    seed: int = 42
    fraud_rate: float = Field(0.00172, gt=0.0, lt=0.5)
    duration_seconds: float = Field(172_800.0, gt=0)
    drift: Drift = Drift()


class Prepare(_Strict):
    drop_duplicates: bool = True
    missing: Literal["fail", "drop", "fill_median"] = "drop"


class Split(_Strict):
    train: list[int]
    valid: list[int]
    test: list[int]

    @model_validator(mode="after")
    def _disjoint(self) -> Split:
        parts = [set(self.train), set(self.valid), set(self.test)]
        if any(not p for p in parts):
            raise ValueError("curate.split needs at least one frame in each of train, valid, test")
        if parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]:
            raise ValueError("curate.split train, valid and test frames must not overlap")
        return self


class FeatureOptions(_Strict):
    log_amount: str | None = "Amount"
    time_of_day: bool = True
    scale: bool = True


class Curate(_Strict):
    split: Split
    features: FeatureOptions = FeatureOptions()


Algorithm = Literal["random_forest", "hist_gradient_boosting", "logistic_regression"]


class Train(_Strict):
    algorithm: Algorithm
    seed: int = 42
    algorithms: dict[Algorithm, dict[str, Any]]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.algorithms.get(self.algorithm, {}))


class Cost(_Strict):
    missed_fraud: float = Field(gt=0)
    review: float = Field(ge=0)


class Slices(_Strict):
    column: str
    edges: list[float]


class Report(_Strict):
    precision_target: float = Field(0.9, gt=0, le=1)
    cost: Cost
    slices: Slices
    calibration_bins: int = Field(10, ge=2)


class Register(_Strict):
    model_name: str
    experiment: str = "crispml"


class Score(_Strict):
    chunk_rows: int = Field(50_000, ge=1)


class LabelSource(_Strict):
    """Where ground truth comes from. `target` reads the source's own target column."""

    kind: Literal["target", "file", "sql"] = "target"
    path: str | None = None
    url: str | None = None
    url_env: str | None = None
    query: str | None = None
    id_column: str = "id"
    label_column: str = "label"


class Label(_Strict):
    source: LabelSource = LabelSource()


class Verify(_Strict):
    drift_max_rows: int = Field(10_000, ge=100)
    seed: int = 0
    workers: int = Field(2, ge=1, le=32)


# --------------------------------------------------------------------------- environment overlay


class GeneratorSource(_Strict):
    kind: Literal["generator"]


class FileSource(_Strict):
    """A CSV or Parquet file, local or `s3://`. S3 credentials come from AWS_* variables."""

    kind: Literal["file"]
    path: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    endpoint_url: str | None = None


class SqlSource(_Strict):
    """A query through SQLAlchemy. A URL with a password belongs in `url_env`, never here."""

    kind: Literal["sql"]
    query: str
    url: str | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_url(self) -> SqlSource:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("a sql source needs exactly one of 'url' or 'url_env'")
        return self


Source = Annotated[GeneratorSource | FileSource | SqlSource, Field(discriminator="kind")]


class Data(_Strict):
    source: Source
    sample_fraction: float = Field(1.0, gt=0, le=1)
    sample_seed: int = 7


class Generalise(_Strict):
    """How one quasi-identifier is coarsened: numeric bands or a kept prefix."""

    bin_width: float | None = Field(None, gt=0)
    keep_prefix: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_rule(self) -> Generalise:
        if (self.bin_width is None) == (self.keep_prefix is None):
            raise ValueError("a generalisation needs exactly one of 'bin_width' or 'keep_prefix'")
        return self


class Privacy(_Strict):
    drop_direct_identifiers: bool = True
    pseudonymise_ids: bool = False
    key_env: str = "CRISPML_PSEUDONYMISATION_KEY"
    generalise: dict[str, Generalise] = {}
    min_k: int | None = Field(None, ge=1)


class RegisterGate(_Strict):
    min_pr_auc: float = Field(ge=0, le=1)
    max_pr_auc_drop: float = Field(ge=0, le=1)


class VerifyGate(_Strict):
    max_drift_share: float = Field(ge=0, le=1)
    max_pr_auc_drop: float = Field(ge=0, le=1)
    on_failure: Literal["fail", "warn"] = "fail"


class Gates(_Strict):
    # `register` would shadow pydantic's own attribute, hence the alias.
    registration: RegisterGate = Field(alias="register")
    verify: VerifyGate


class Registry(_Strict):
    alias: str
    # prod sets this to "qa": when prod's own model fails the gate, prod serves the
    # version that QA validated for the same git commit instead of nothing new.
    fallback_alias: str | None = None


class Store(_Strict):
    url: str


class Environment(_Strict):
    data: Data
    privacy: Privacy = Privacy()
    gates: Gates
    registry: Registry
    store: Store
    dvc_remote: str


# --------------------------------------------------------------------------- settings


class Settings(_Strict):
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
    environment: Environment

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        split_frames = {*self.curate.split.train, *self.curate.split.valid, *self.curate.split.test}
        if split_frames != set(self.frames.train):
            raise ValueError(
                f"curate.split frames {sorted(split_frames)} must be exactly frames.train "
                f"{sorted(self.frames.train)}"
            )
        known = {s.name for s in self.contract.specs}
        if self.report.slices.column not in known:
            raise ValueError(
                f"report.slices.column {self.report.slices.column!r} is not in the contract"
            )
        for column in self.environment.privacy.generalise:
            if column not in self.contract.names(Role.QUASI_IDENTIFIER):
                raise ValueError(f"privacy.generalise names {column!r}, not a quasi_identifier")
        return self

    @property
    def label_source(self) -> LabelSource:
        return self.label.source

    @property
    def store_url(self) -> str:
        url = os.environ.get(ENV_STORE_URL) or self.environment.store.url
        return resolve_sqlite_url(url, self.root)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get(ENV_MLFLOW_URI) or f"sqlite:///{self.root / 'mlflow.db'}"

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


def _read_yaml(path: Path) -> dict[str, Any]:
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
        shown = "" if isinstance(value, dict | list) else f" (value: {value!r})"
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def environment_path(root: Path, env: str) -> Path:
    return root / ENVIRONMENTS_DIR / env / ENV_PARAMS_FILE


def load_settings(root: Path | None = None, env: str | None = None) -> Settings:
    """Load params.yaml and the active environment's overlay into one typed object."""
    root = (root or find_root()).resolve()
    params = _read_yaml(root / PARAMS_FILE)
    env = env or params.get("env")
    if not isinstance(env, str) or not env:
        raise ConfigError(f"{root / PARAMS_FILE}: key 'env' must name an environment")
    env_file = environment_path(root, env)
    if not env_file.is_file():
        known = sorted(p.name for p in (root / ENVIRONMENTS_DIR).glob("*/") if p.is_dir())
        raise ConfigError(f"environment {env!r} has no {env_file} (known: {known})")
    overlay = _read_yaml(env_file)
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
