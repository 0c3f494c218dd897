"""The service's own settings: limits, tokens and timings, read once from the environment.

They live in environment variables rather than in `params.yaml` because they describe
one deployment (a pod, a laptop), not the model lifecycle that is promoted as code:
the same image runs with other limits in qa and prod, and the token is a secret that
must never be in a committed file.

| variable | default | meaning |
|---|---|---|
| CRISPML_API_TOKEN | (unset) | bearer token for labels and admin (unset: they answer 503) |
| CRISPML_SCORE_REQUIRES_TOKEN | false | scoring needs the token too |
| CRISPML_SERVICE_MAX_BATCH | 100 | records in one POST /v1/score |
| CRISPML_SERVICE_MAX_LABELS | 10000 | labels in one POST /v1/labels |
| CRISPML_SERVICE_MAX_BODY_BYTES | 1048576 | request body limit (413 above) |
| CRISPML_SERVICE_RELOAD_INTERVAL | 30 | seconds between alias polls; 0 = never poll |
| CRISPML_SERVICE_COMMIT_MAX_ROWS | 2000 | rows in one group-commit transaction |
| CRISPML_SERVICE_COMMIT_WAIT_MS | 0 | extra wait to fill a commit; 0 = take what queued meanwhile |
| CRISPML_SERVICE_PREDICT_MAX_ROWS | 512 | rows in one batched predict_proba call |
| CRISPML_SERVICE_STORE_TIMEOUT | 10 | seconds a request waits for its commit before 503 |
| CRISPML_SERVICE_SHADOW_MAX_BACKLOG | 2000 | challenger rows queued at most; more: dropped |
| CRISPML_SERVICE_LABEL_AGE_TTL | 30 | seconds /metrics reuses the newest-label times |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.errors import ConfigError

TOKEN_ENV = "CRISPML_API_TOKEN"
SCORE_TOKEN_ENV = "CRISPML_SCORE_REQUIRES_TOKEN"
PREFIX = "CRISPML_SERVICE_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: expected one of {sorted(_TRUE | _FALSE - {''})}")


def _number(name: str, raw: str, kind: type, minimum: float) -> float:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be >= {minimum}")
    return value


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and switches of one running service. Frozen: read once, never mutated."""

    max_batch: int = 100
    max_labels: int = 10_000
    max_body_bytes: int = 1_048_576
    reload_interval: float = 30.0
    commit_max_rows: int = 2_000
    commit_wait_ms: float = 0.0
    predict_max_rows: int = 512
    store_timeout: float = 10.0
    shadow_max_backlog: int = 2_000
    label_age_ttl: float = 30.0
    score_requires_token: bool = False
    # repr=False: the token must never end up in a log line or a traceback.
    api_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServiceConfig:
        """Read the variables above; a malformed value is a ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        numbers: dict[str, tuple[type, float]] = {
            "max_batch": (int, 1),
            "max_labels": (int, 1),
            "max_body_bytes": (int, 1024),
            "reload_interval": (float, 0),
            "commit_max_rows": (int, 1),
            "commit_wait_ms": (float, 0),
            "predict_max_rows": (int, 1),
            "store_timeout": (float, 0.1),
            "shadow_max_backlog": (int, 0),
            "label_age_ttl": (float, 0),
        }
        for key, (kind, minimum) in numbers.items():
            name = PREFIX + key.upper()
            if env.get(name, "").strip():
                values[key] = _number(name, env[name], kind, minimum)
        if SCORE_TOKEN_ENV in env:
            values["score_requires_token"] = _flag(SCORE_TOKEN_ENV, env[SCORE_TOKEN_ENV])
        token = env.get(TOKEN_ENV, "").strip()
        values["api_token"] = token or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)  # type: ignore[arg-type]
        if config.score_requires_token and config.api_token is None:
            raise ConfigError(
                f"{SCORE_TOKEN_ENV} is on but {TOKEN_ENV} is not set: nobody could score"
            )
        return config
