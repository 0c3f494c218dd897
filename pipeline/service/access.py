"""Who may call what: bearer tokens per role, and the optional per-client rate limit.

Both are FastAPI dependencies that a router attaches per route (`Access.requires`),
not a middleware: a dependency knows its route's role, the bearer scheme shows in the
OpenAPI schema on exactly the endpoints that need a token, and a route that declares
none (the probes, /metrics) can be refused by neither. Auth comes first, so a request
without a valid token is a 401 and does not count against anyone's limit.

No `from __future__ import annotations`: FastAPI reads the dependencies' signatures.
"""

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from pipeline.service.config import RATE_LIMIT_ENV, TOKEN_ENV, TOKENS_ENV, ServiceConfig
from pipeline.service.contract import Problem
from pipeline.service.ratelimit import RateLimiter

Responses = dict[int | str, dict[str, Any]]


class Access:
    """Token checks and rate limits of one app; refuses a strict environment that has a
    role nobody holds a token for (`ServiceConfig.check_for`)."""

    def __init__(self, config: ServiceConfig, environment: str) -> None:
        config.check_for(environment)  # qa/prod: refuse to start with a role nobody holds
        self.config = config
        self.open_roles = config.open_roles(environment)
        self.limiter = None if config.rate_limit is None else RateLimiter(config.rate_limit)
        self.bearer = HTTPBearer(
            auto_error=False, description=f"A token of {TOKEN_ENV} or {TOKENS_ENV} with the role."
        )

    def requires(self, role: str) -> list[Any]:
        """The dependencies guarding an endpoint of `role`. An open role has no token
        check, so that the OpenAPI schema shows exactly the endpoints that need a token,
        and without a rate limit it has no dependency at all."""
        if role in self.open_roles:
            return [] if self.limiter is None else [Depends(self._limit_open)]
        config = self.config

        async def check(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(self.bearer)],
        ) -> None:
            if not config.has_token_for(role):
                raise HTTPException(
                    503,
                    f"this endpoint is disabled: the server has no token for role {role!r} "
                    f"({TOKEN_ENV} is unset and {TOKENS_ENV} names none)",
                )
            who, granted = config.identify(credentials.credentials if credentials else "")
            if not granted:
                raise HTTPException(
                    401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
                )
            if role not in granted:
                raise HTTPException(403, f"this token does not have the role {role!r}")
            if self.limiter is not None:
                self._count(f"token:{who}", "this token")

        return [Depends(check)]

    async def _limit_open(self, request: Request) -> None:
        """An open endpoint: a valid token still counts as its holder (one limit per
        client, whichever endpoints it calls); otherwise the client's address counts."""
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        who = self.config.identify(token)[0] if token and scheme.lower() == "bearer" else None
        if who is not None:
            self._count(f"token:{who}", "this token")
        else:
            address = request.client.host if request.client else "unknown"
            self._count(f"address:{address}", "this address")

    def _count(self, key: str, whose: str) -> None:
        assert self.limiter is not None
        wait = self.limiter.acquire(key)
        if wait is not None:
            raise HTTPException(
                429,
                f"too many requests from {whose}: the limit is {self.limiter.spec} "
                f"({RATE_LIMIT_ENV}); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def responses(self, role: str) -> Responses:
        """The error answers `requires(role)` adds, for the OpenAPI schema."""
        limited: Responses = {}
        if self.limiter is not None:
            limited[429] = {
                "model": Problem,
                "description": f"Above the rate limit ({RATE_LIMIT_ENV}); Retry-After says "
                "when to try again.",
            }
        if role in self.open_roles:
            return limited
        return {
            401: {"model": Problem, "description": "Missing or unknown bearer token."},
            403: {"model": Problem, "description": f"The token lacks the role {role!r}."},
            503: {"model": Problem, "description": "No token configured, or a dependency is down."},
            **limited,
        }
