"""The keys of `environments/<env>/params.yaml`: what differs per environment.

Data access (source, sampling, the privacy filter), gates, the registry alias, the
score store and the DVC remote. Credentials are never keys here: they come from
environment variables that these keys name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from pipeline.config.contract import Strict, without_password

UrlWithoutPassword = Annotated[str, AfterValidator(without_password)]


class GeneratorSource(Strict):
    kind: Literal["generator"]


class FileSource(Strict):
    """A CSV or Parquet file, local or `s3://`. S3 credentials come from AWS_* variables."""

    kind: Literal["file"]
    path: str = Field(min_length=1)
    format: Literal["auto", "csv", "parquet"] = "auto"
    endpoint_url: str | None = None


class SqlSource(Strict):
    """A query through SQLAlchemy. A URL with a password belongs in `url_env`, never here."""

    kind: Literal["sql"]
    query: str
    url: UrlWithoutPassword | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_url(self) -> SqlSource:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("a sql source needs exactly one of 'url' or 'url_env'")
        return self


Source = Annotated[GeneratorSource | FileSource | SqlSource, Field(discriminator="kind")]


class Data(Strict):
    source: Source
    sample_fraction: float = Field(1.0, gt=0, le=1)
    sample_seed: int = 7


class Generalise(Strict):
    """How one quasi-identifier is coarsened: numeric bands or a kept prefix."""

    bin_width: float | None = Field(None, gt=0)
    keep_prefix: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_rule(self) -> Generalise:
        if (self.bin_width is None) == (self.keep_prefix is None):
            raise ValueError("a generalisation needs exactly one of 'bin_width' or 'keep_prefix'")
        return self


# HMAC-SHA256 is only as strong as its key: at least the hash's 32 bytes (RFC 2104).
MIN_KEY_BYTES = 32


class Privacy(Strict):
    drop_direct_identifiers: bool = True
    pseudonymise_ids: bool = False
    key_env: str = "CRISPML_PSEUDONYMISATION_KEY"
    generalise: dict[str, Generalise] = Field(default_factory=dict)
    min_k: int | None = Field(None, ge=1)


class GateEvidence(Strict):
    """How sure a gate must be before it decides, and how little data is too little.

    Each gate resamples its rows `resamples` times (a stratified bootstrap) and judges
    the interval at `confidence`, not a point estimate. Below `min_positives` labelled
    positives the verdict is "not enough evidence", with the count.
    """

    confidence: float = Field(0.95, gt=0.5, lt=1)
    resamples: int = Field(1000, ge=100, le=100_000)
    min_positives: int = Field(30, ge=1)
    seed: int = 0


class RegisterGate(Strict):
    """A candidate must clear every floor that is set, and not be worse than the champion.

    PR-AUC depends on the positive rate (its floor for random scores is that rate), so
    `min_pr_auc` is a per-dataset choice; `min_roc_auc` means the same on any table.
    `max_pr_auc_drop` is the margin of the paired bootstrap against the champion: the
    candidate passes when, at `evidence.confidence`, it is not worse by more than that.
    """

    min_pr_auc: float | None = Field(None, ge=0, le=1)
    min_roc_auc: float | None = Field(None, ge=0, le=1)
    max_pr_auc_drop: float = Field(ge=0, le=1)


class VerifyGate(Strict):
    """Realised quality fails only when its whole interval is below the allowed drop."""

    max_drift_share: float = Field(ge=0, le=1)
    max_pr_auc_drop: float = Field(ge=0, le=1)
    on_failure: Literal["fail", "warn"] = "fail"


class Gates(Strict):
    # `register` would shadow pydantic's own attribute, hence the alias.
    registration: RegisterGate = Field(alias="register")
    verify: VerifyGate
    evidence: GateEvidence = GateEvidence()


class Shadow(Strict):
    """Champion/challenger: when `crispml shadow promote` (without --manual) may promote.

    `auto_promote: false` leaves promotion to a person (`--manual --reason ...`).
    """

    min_labelled_scores: int = Field(1000, ge=1)
    auto_promote: bool = False


class Registry(Strict):
    alias: str
    # prod sets this to "qa": when prod's own model fails the gate, prod serves the
    # version that QA validated for the same git commit instead of nothing new.
    fallback_alias: str | None = None
    # The alias whose holder the service scores in shadow beside @alias (default
    # "<alias>-challenger"); its scores are stored, never answered.
    challenger_alias: str | None = None
    shadow: Shadow = Shadow()

    @property
    def challenger(self) -> str:
        return self.challenger_alias or f"{self.alias}-challenger"


class Store(Strict):
    url: UrlWithoutPassword


class CiJob(Strict):
    """What a CI job of this environment refuses to run without (`crispml ci setup`).

    Without its store variable a job writes scores into a SQLite file that vanishes with
    the job; without its remote variable DVC pushes to the embedded local folder. A
    shared environment (qa, prod) must fail loudly instead.
    """

    require_store_url: bool = False
    require_dvc_remote_url: bool = False


class Environment(Strict):
    data: Data
    privacy: Privacy = Privacy()
    gates: Gates
    registry: Registry
    store: Store
    dvc_remote: str
    ci: CiJob = CiJob()
