"""The service's own settings: limits, tokens and timings, read once from the environment.

They live in environment variables rather than in `params.yaml` because they describe
one deployment (a pod, a laptop), not the model lifecycle that is promoted as code:
the same image runs with other limits in qa and prod, and the tokens are secrets that
must never be in a committed file.

| variable | default | meaning |
|---|---|---|
| CRISPML_API_TOKEN | (unset) | one bearer token with the admin role (admin implies every role) |
| CRISPML_API_TOKENS | (unset) | `role:token` pairs separated by commas or whitespace |
| CRISPML_SCORE_REQUIRES_TOKEN | false | dev: scoring needs a score token too (qa/prod: always) |
| CRISPML_SERVICE_REPORT_MAX_ROWS | 100000 | scores /v1/report reads at most; above: a sample |
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
| CRISPML_RATE_LIMIT | (unset: off) | requests per token, e.g. `100/minute`; 429 above it |

Roles and what they may call (a token of the wrong role gets 403, none or an unknown one
401; `admin` implies every other role):

| role | endpoints |
|---|---|
| score | POST /v1/score |
| read | GET /v1/scores/{score_id}, GET /v1/report |
| label | POST /v1/labels |
| admin | POST /v1/admin/reload, and everything above |

Example: `CRISPML_API_TOKENS="score:3f9c...,read:8a1b... label:77d0..."`. A token may hold
any character but commas and whitespace; the same token named for two roles has both.

/healthz, /readyz and /metrics never need a token (probes and Prometheus). In the shared
environments (`STRICT_ENVIRONMENTS`: qa, prod) every other endpoint needs one, and the
service refuses to start unless each role has a token (an admin token covers them all):
an open scoring or audit endpoint there must be a decision nobody can take by forgetting
a variable. In any other environment (dev, a laptop) scoring and reading stay open unless
CRISPML_SCORE_REQUIRES_TOKEN says otherwise, and an endpoint whose role has no token
answers 503 (disabled), as before roles existed.

CRISPML_RATE_LIMIT (`pipeline.service.ratelimit`) limits the requests of each token over a
moving window, `100/minute` or several limits such as `10/second;500/hour`, across every
endpoint but /healthz, /readyz and /metrics (probes and scrapes must never be refused). A
request to an open endpoint without a valid token counts against its client address.
Above the limit the answer is 429 with Retry-After. Each replica counts on its own.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.errors import ConfigError

TOKEN_ENV = "CRISPML_API_TOKEN"
TOKENS_ENV = "CRISPML_API_TOKENS"
SCORE_TOKEN_ENV = "CRISPML_SCORE_REQUIRES_TOKEN"
RATE_LIMIT_ENV = "CRISPML_RATE_LIMIT"
PREFIX = "CRISPML_SERVICE_"

ROLES = ("score", "read", "label", "admin")
ADMIN = "admin"
# Environments shared by other people and real data: every endpoint but the probes and
# /metrics needs a token there, and a missing token is a start-up error.
STRICT_ENVIRONMENTS = frozenset({"qa", "prod"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: expected one of {sorted(_TRUE | _FALSE - {''})}")


def _tokens(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`role:token` pairs; errors name the variable and the pair's position, never a token."""
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(re.split(r"[,\s]+", raw.strip()) if raw.strip() else []):
        role, colon, token = item.partition(":")
        if not colon or role not in ROLES or not token:
            raise ConfigError(
                f"{name}: pair {index + 1} is not role:token with a role of {list(ROLES)} "
                "and a non-empty token"
            )
        pairs.append((role, token))
    return tuple(pairs)


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
    report_max_rows: int = 100_000
    score_requires_token: bool = False
    # repr=False: a token must never end up in a log line or a traceback.
    api_token: str | None = field(default=None, repr=False)
    # (role, token) pairs from CRISPML_API_TOKENS; `api_token` is an admin token beside them.
    api_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # CRISPML_RATE_LIMIT as given ("100/minute"); None: no limit.
    rate_limit: str | None = None

    def __post_init__(self) -> None:
        if self.rate_limit is not None:
            from pipeline.service.ratelimit import parse_rate_limit

            parse_rate_limit(self.rate_limit)  # a typo fails at start-up, naming the variable

    def _all_tokens(self) -> tuple[tuple[str, str], ...]:
        admin = () if self.api_token is None else ((ADMIN, self.api_token),)
        return admin + self.api_tokens

    def has_token_for(self, role: str) -> bool:
        """Some configured token grants `role` (its own or an admin token)."""
        return any(held in (role, ADMIN) for held, _ in self._all_tokens())

    def roles_of(self, given: str) -> frozenset[str]:
        """The roles `given` grants (empty: no such token), with admin expanded to all."""
        return self.identify(given)[1]

    def identify(self, given: str) -> tuple[str | None, frozenset[str]]:
        """Who presents `given`, and the roles it grants (as `roles_of`).

        Who is a name for the configured token that says nothing about its value
        (`token-2`: the second configured, counting CRISPML_API_TOKEN first), the same
        for a token named for several roles; None for no such token. Rate limits count
        by it, so a token never becomes a dictionary key, a log field or a metric label.

        Every configured token is compared, each in constant time, and the loop does
        not stop at a match: how long the answer takes says nothing about which token,
        or which prefix of one, is right.
        """
        presented = given.encode()
        who: str | None = None
        granted: set[str] = set()
        for index, (role, token) in enumerate(self._all_tokens()):
            if hmac.compare_digest(presented, token.encode()):
                granted.add(role)
                who = who or f"token-{index + 1}"
        return who, frozenset(ROLES) if ADMIN in granted else frozenset(granted)

    def open_roles(self, environment: str) -> frozenset[str]:
        """Roles whose endpoints answer without a token in `environment`."""
        if environment in STRICT_ENVIRONMENTS:
            return frozenset()
        return frozenset({"read"} if self.score_requires_token else {"read", "score"})

    def check_for(self, environment: str) -> None:
        """In a strict environment, a ConfigError unless every role has a token."""
        if environment not in STRICT_ENVIRONMENTS:
            return
        missing = [role for role in ROLES if not self.has_token_for(role)]
        if missing:
            raise ConfigError(
                f"environment {environment!r} needs a bearer token for every endpoint, but no "
                f"token grants {missing}: set {TOKEN_ENV} (an admin token) or name "
                f"role:token pairs in {TOKENS_ENV}"
            )

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
            "report_max_rows": (int, 1),
        }
        for key, (kind, minimum) in numbers.items():
            name = PREFIX + key.upper()
            if env.get(name, "").strip():
                values[key] = _number(name, env[name], kind, minimum)
        if SCORE_TOKEN_ENV in env:
            values["score_requires_token"] = _flag(SCORE_TOKEN_ENV, env[SCORE_TOKEN_ENV])
        token = env.get(TOKEN_ENV, "").strip()
        values["api_token"] = token or None
        values["api_tokens"] = _tokens(TOKENS_ENV, env.get(TOKENS_ENV, ""))
        values["rate_limit"] = env.get(RATE_LIMIT_ENV, "").strip() or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)  # type: ignore[arg-type]
        if config.score_requires_token and not config.has_token_for("score"):
            raise ConfigError(
                f"{SCORE_TOKEN_ENV} is on but {TOKEN_ENV} is not set and {TOKENS_ENV} names "
                "no score token: nobody could score"
            )
        return config
