"""An optional request limit per client: per token, or per address where no token is sent.

Why in the service rather than only at an ingress: only the service knows which token a
request carries, so a limit per token (one noisy batch job must not starve the other
clients of the same deployment) can only be applied here; an ingress sees addresses.

Why a moving window (`limits`' MovingWindowRateLimiter): a fixed window lets a client
send twice the limit across a window boundary; the moving window counts the last full
period at every request, and the moment its oldest counted request leaves the window is
an exact Retry-After. It keeps one timestamp per counted request and key, so at most the
limit's amount per client.

Why in memory: each replica counts its own clients, so with N replicas behind a load
balancer a client gets up to N times the limit. A shared store (Redis) would make the
bound exact, at the price of another service and a network round trip on the scoring
path; a limit meant to stop runaway clients does not need that precision.

The counters are keyed by an identity that names no secret (`ServiceConfig.identify`:
the position of the configured token), never by the token.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.service.config import RATE_LIMIT_ENV

if TYPE_CHECKING:
    from limits import RateLimitItem


def parse_rate_limit(spec: str) -> list[RateLimitItem]:
    """`100/minute`, `10 per second`, or several separated by `;` (each one applies)."""
    from limits import parse_many

    try:
        items = parse_many(spec)
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(
            f"{RATE_LIMIT_ENV}={spec!r}: expected requests per period such as '100/minute', "
            "'10/second' or '5 per 2 seconds', several separated by ';', each at least 1"
        )
    return items


class RateLimiter:
    """Counts requests per key; used from the event loop only, so a check and the count
    that follows it are one step that no other request can interleave with."""

    def __init__(self, spec: str) -> None:
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.spec = spec
        self._items = parse_rate_limit(spec)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def acquire(self, key: str) -> int | None:
        """Count one request of `key` and return None; or, when any limit is reached,
        count nothing and return the whole seconds until a request of `key` may pass."""
        refused = [item for item in self._items if not self._limiter.test(item, key)]
        if refused:
            now = time.time()
            reset = max(self._limiter.get_window_stats(item, key).reset_time for item in refused)
            return max(1, math.ceil(reset - now))
        for item in self._items:
            self._limiter.hit(item, key)
        return None
