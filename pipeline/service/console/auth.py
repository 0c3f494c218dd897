"""Console sessions: a bearer token, given once on the login form, becomes a signed cookie.

A browser cannot send the `Authorization` header on a navigation, so the console trades
the token for a cookie that names who logged in (`token-2`, as `ServiceConfig.identify`
names callers), their roles, an expiry and a random nonce, signed with HMAC-SHA256.
The token itself is never stored, echoed, put in a URL or logged.

Stateless on purpose: the key is derived from the configured tokens, so every worker
process of one deployment (and every replica with the same secret) accepts the same
cookie without shared storage, and changing or revoking any token ends every session
at once. The cost: logging out clears the browser's cookie but cannot revoke a copy of
it before it expires (`SESSION_SECONDS`).

CSRF: the cookie is `SameSite=Strict` (a cross-site form post does not carry it), and
each state-changing form also carries a token derived from the session's nonce, checked
in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from pipeline.service.config import ADMIN, ServiceConfig

COOKIE = "crispml_console"
COOKIE_PATH = "/console"
SESSION_SECONDS = 8 * 3600
# The roles that may open the console; only admin may act in it.
VIEW_ROLES = frozenset({"read", ADMIN})


@dataclass(frozen=True)
class Session:
    who: str
    roles: frozenset[str]
    expires: int
    nonce: str

    @property
    def admin(self) -> bool:
        return ADMIN in self.roles


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signs and checks console cookies and their CSRF tokens for one service config."""

    def __init__(self, config: ServiceConfig) -> None:
        material = json.dumps([config.api_token, list(config.api_tokens)]).encode()
        # A key per set of tokens: rotating any token invalidates every cookie signed before.
        self._key = hmac.new(b"crispml console session v1", material, hashlib.sha256).digest()
        self.config = config

    def _mac(self, purpose: bytes, payload: bytes) -> str:
        return _b64(hmac.new(self._key, purpose + b"|" + payload, hashlib.sha256).digest())

    def login(self, token: str, now: float | None = None) -> Session | None:
        """The session a token opens, or None (unknown token, or no role that may view)."""
        who, roles = self.config.identify(token)
        if who is None or not roles & VIEW_ROLES:
            return None
        expires = int((now or time.time()) + SESSION_SECONDS)
        return Session(who, roles & VIEW_ROLES, expires, secrets.token_urlsafe(16))

    def cookie(self, session: Session) -> str:
        payload = json.dumps(
            {
                "who": session.who,
                "roles": sorted(session.roles),
                "exp": session.expires,
                "nonce": session.nonce,
            },
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{self._mac(b'session', payload)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None when it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1024:
            return None
        body, mac = cookie.split(".")
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(b"session", payload)):
            return None
        try:
            data = json.loads(payload)
            session = Session(
                str(data["who"]), frozenset(data["roles"]), int(data["exp"]), str(data["nonce"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < (now or time.time()):
            return None
        return session

    def csrf(self, session: Session) -> str:
        return self._mac(b"csrf", session.nonce.encode())

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given), self.csrf(session))
