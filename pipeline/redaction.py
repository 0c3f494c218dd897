"""URLs fit for a log, an MLflow param or a report: no password, no token in the query.

Every URL the project prints, logs or stores goes through `redact_url`. Credentials
belong in environment variables (see DESIGN.md), but a URL with an inline password
still reaches us by mistake, and a pasted log or an MLflow param must not pass it on.
SQLAlchemy renders the URL, so what it parses is exactly what the engine would use.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
# Query keys that carry a credential (libpq's password, S3 presigned signatures, tokens).
SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key|signature|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with the password and any secret-looking query value replaced by ***."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _redact_plainly(url)
    if any(SECRET_QUERY_KEY.search(key) for key in parsed.query):
        parsed = parsed.update_query_dict(
            {k: HIDDEN for k in parsed.query if SECRET_QUERY_KEY.search(k)}
        )
    return parsed.render_as_string(hide_password=True)


def _redact_plainly(url: str) -> str:
    """For what SQLAlchemy cannot parse: the whole user part and secret query values go."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode(
        [
            (k, HIDDEN if SECRET_QUERY_KEY.search(k) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_params(params: dict[str, str]) -> dict[str, str]:
    """Flat params with every URL-valued entry redacted (params name no secret otherwise)."""
    return {key: redact_url(value) if "://" in value else value for key, value in params.items()}
