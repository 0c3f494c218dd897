"""The console's routes: login, the page, rollback, live traffic, static files, reports.

None is in the OpenAPI schema (`include_in_schema=False`): the console is pages for
people, not part of the API that clients are generated from, fuzzed or pinned.

Pages are Jinja2 templates with autoescaping; every page answer carries a strict
Content-Security-Policy (scripts only from this service, no frames, no third-party
origin) and `no-store`, since it shows scores and lineage. Forms are read as
`application/x-www-form-urlencoded` by the standard library, so the console needs no
multipart parser.

No `from __future__ import annotations`: FastAPI reads the routes' signatures.
"""

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from pipeline.errors import CrispError
from pipeline.service.access import Access
from pipeline.service.console import queries, reports, serving
from pipeline.service.console.auth import COOKIE, COOKIE_PATH, SESSION_SECONDS, Session, Sessions
from pipeline.service.state import ServiceState

log = logging.getLogger("pipeline.service.console")

HERE = Path(__file__).parent
# user:password@ in a URL that an error message may quote (a store's or a registry's).
_CREDENTIALS = re.compile(r"(//[^/\s:@]+):[^@\s/]+@")
PREFIX = "/console"
MAX_REASON = 500
MAX_FIELD = 2048
RELOAD_TIMEOUT = 60.0

PAGE_HEADERS = {
    # Plotly sets styles at run time ('unsafe-inline' for styles only); no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it Chromium sends `Origin: null` with the page's own forms,
    # and the Origin check below could no longer tell them from another site's.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Evidently's pages run their own inline scripts. Sandboxed, they get an opaque origin:
# they cannot read the console's pages, cookies or API, nor send anything anywhere.
REPORT_HEADERS = {
    "Content-Security-Policy": (
        "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
        "style-src 'unsafe-inline'; img-src data: blob:; font-src data:"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static_files() -> dict[str, tuple[Path, str]]:
    """The only files /console/static serves, by name: no path is ever built from a URL."""
    from importlib.util import find_spec

    spec = find_spec("plotly")  # located, not imported: the package is large
    package = Path(spec.origin).parent if spec and spec.origin else HERE
    plotly_js = package / "package_data" / "plotly.min.js"
    return {
        "console.css": (HERE / "static" / "console.css", "text/css"),
        "console.js": (HERE / "static" / "console.js", "text/javascript"),
        "plotly.min.js": (plotly_js, "text/javascript"),
    }


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    env.filters["short"] = lambda v, n=12: "–" if not v else str(v)[:n]
    env.filters["when"] = lambda v: "–" if v is None else v.strftime("%Y-%m-%d %H:%M:%S")
    return Jinja2Templates(env=env)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


async def _form(request: Request) -> dict[str, str] | None:
    """A urlencoded form's fields (first value each), or None for any other body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    try:
        text = (await request.body()).decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0][:MAX_FIELD] for key, values in fields.items() if values}


def _same_origin(request: Request) -> bool:
    """A browser's Origin (sent on every POST) must be this service: defence in depth
    beside the SameSite cookie and the CSRF token. No Origin: not a browser's form."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def add_routes(routes: APIRouter, state: ServiceState, access: Access) -> None:
    sessions = Sessions(state.config)
    traffic = queries.Traffic(state.metrics)
    templates = _templates()
    static = _static_files()
    settings = state.settings
    root = settings.root
    no_tokens = not (state.config.api_token or state.config.api_tokens)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        base = {"environment": state.environment, "session": None, "csrf": ""}
        return templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status, headers=PAGE_HEADERS
        )

    def message(
        request: Request, session: Session | None, status: int, title: str, text: str
    ) -> Response:
        return page(
            request,
            "message.html",
            {
                "session": session,
                "csrf": sessions.csrf(session) if session else "",
                "title": title,
                "text": text,
            },
            status,
        )

    def current(request: Request) -> Session | None:
        return sessions.read(request.cookies.get(COOKIE))

    def to_login() -> Response:
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    async def section(what: str, call: Any, *args: Any) -> tuple[Any, str | None]:
        """One part of the page; its failure is shown in its place, never a 500 page."""
        try:
            return await asyncio.to_thread(call, *args), None
        except Exception as error:
            # The message for the log (a password in a URL masked), the type for the page.
            text = _CREDENTIALS.sub(r"\1:***@", str(error))[:500]
            log.warning("console: %s not read: %s: %s", what, type(error).__name__, text)
            return None, f"{what} could not be read ({type(error).__name__}); see the service log"

    # ------------------------------------------------------------------ login

    @routes.get(f"{PREFIX}/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        if current(request) is not None:
            return RedirectResponse(PREFIX, status_code=303)
        return page(request, "login.html", {"error": None, "no_tokens": no_tokens})

    @routes.post(f"{PREFIX}/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return message(request, None, 403, "Refused", "The form came from another site.")
        if access.limiter is not None:
            address = request.client.host if request.client else "unknown"
            wait = access.limiter.acquire(f"console-login:{address}")
            if wait is not None:
                return message(request, None, 429, "Too many attempts", f"Try again in {wait} s.")
        form = await _form(request) or {}
        session = sessions.login(form.get("token", "").strip())
        if session is None:
            log.info("console: login refused")  # never the token, not even its length
            error = "This token is not known, or has neither the read nor the admin role."
            return page(request, "login.html", {"error": error, "no_tokens": no_tokens}, 401)
        log.info("console: %s logged in (roles %s)", session.who, sorted(session.roles))
        answer = RedirectResponse(PREFIX, status_code=303)
        answer.set_cookie(
            COOKIE,
            sessions.cookie(session),
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @routes.post(f"{PREFIX}/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = current(request)
        form = await _form(request) or {}
        if session is not None and not sessions.csrf_ok(session, form.get("csrf")):
            return message(request, session, 403, "Refused", "The form's CSRF token is wrong.")
        answer = to_login()
        answer.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return answer

    # ------------------------------------------------------------------ the page

    @routes.get(PREFIX, include_in_schema=False)
    async def console(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        traffic.sample()
        store = state.store
        env = state.environment
        (
            (registry, registry_error),
            (recent, recent_error),
            (coverage, coverage_error),
            (verify, verify_error),
            (replay, replay_error),
        ) = await asyncio.gather(
            section("the registry", serving.overview, settings, store),
            section("recent scores", queries.recent_scores, store, env),
            section("label coverage", queries.label_coverage, store, env),
            section("reports/verify.json", reports.verify_results, root),
            section("reports/replay.json", reports.replay_days, root),
        )
        notice = None
        seq = request.query_params.get("event", "")
        if registry and seq.isdigit():
            own = next(h for h in registry["histories"] if h["alias"] == settings.alias)
            event = next((e for e in own["events"] if e["seq"] == int(seq)), None)
            if event is not None:
                notice = event
        loaded = [{"role": role, **model.info()} for role, model in state.roles()]
        context = {
            "session": session,
            "csrf": sessions.csrf(session),
            "alias": settings.alias,
            "registry": registry,
            "registry_error": registry_error,
            "loaded": loaded,
            "notice": notice,
            "recent": recent,
            "recent_error": recent_error,
            "coverage": coverage,
            "coverage_error": coverage_error,
            "verify": verify,
            "verify_error": verify_error,
            "replay": replay,
            "replay_error": replay_error,
            "charts": {**reports.charts(verify, replay), "traffic": traffic.series()},
            "traffic": traffic.summary(),
            "max_reason": MAX_REASON,
            "coverage_days": queries.COVERAGE_DAYS,
        }
        return page(request, "console.html", context)

    @routes.get(f"{PREFIX}/api/traffic", include_in_schema=False)
    async def live_traffic(request: Request) -> Response:
        if current(request) is None:
            return JSONResponse({"detail": "log in at /console/login"}, status_code=401)
        traffic.sample()
        return JSONResponse(
            {"summary": traffic.summary(), "series": traffic.series()},
            headers={"Cache-Control": "no-store"},
        )

    # ------------------------------------------------------------------ rollback

    @routes.post(f"{PREFIX}/rollback", include_in_schema=False)
    async def rollback(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        if not session.admin:
            return message(
                request, session, 403, "Not allowed", "Only an admin token may roll back."
            )
        form = await _form(request)
        if (
            form is None
            or not _same_origin(request)
            or not sessions.csrf_ok(session, form.get("csrf"))
        ):
            return message(
                request,
                session,
                403,
                "Refused",
                "The form's CSRF token is missing or wrong (or it came from another site). "
                "Reload the console and try again.",
            )
        expected, target = form.get("expected", ""), form.get("target", "")
        note = " ".join(form.get("reason", "").split())  # one line, for the history
        if not note:
            return message(
                request, session, 400, "A reason is required", "Say why, for the alias history."
            )
        if len(note) > MAX_REASON or not expected or not target:
            return message(
                request,
                session,
                400,
                "Not rolled back",
                f"The reason may hold at most {MAX_REASON} characters, and the form must name "
                "the version it saw and the one to go back to.",
            )
        actor = f"console:{session.who}"
        try:
            event = await asyncio.to_thread(
                serving.rollback,
                settings,
                state.store,
                expected=expected,
                target=target,
                note=note,
                actor=actor,
            )
        except serving.Stale as stale:
            log.warning("console: rollback by %s refused: %s", actor, stale)
            return message(request, session, 409, "The alias moved: not rolled back", str(stale))
        except CrispError as error:
            log.warning("console: rollback by %s failed: %s", actor, error)
            return message(request, session, 400, "Not rolled back", str(error))
        log.info(
            "console: %s rolled @%s back from version %s to %s",
            actor,
            settings.alias,
            expected,
            target,
        )
        # Serve it now, in this process; the others follow at their next poll.
        started = time.monotonic()
        try:
            await asyncio.wait_for(state.refresh_models(), RELOAD_TIMEOUT)
        except Exception as error:
            log.warning(
                "console: reload after rollback failed after %.1f s (the poll retries): %s",
                time.monotonic() - started,
                type(error).__name__,
            )
        return RedirectResponse(f"{PREFIX}?event={event['seq']}#history", status_code=303)

    # ------------------------------------------------------------------ files

    @routes.get(f"{PREFIX}/static/{{name}}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None or not found[0].is_file():
            return Response("not found", status_code=404, media_type="text/plain")
        path, media_type = found
        return FileResponse(
            path,
            media_type=media_type,
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @routes.get(f"{PREFIX}/reports/verify/{{name}}", include_in_schema=False)
    async def verify_report(request: Request, name: str) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        path = await asyncio.to_thread(reports.verify_page, root, name)
        if path is None:
            return message(
                request,
                session,
                404,
                "No such report",
                "reports/verify holds no page of that name.",
            )
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)
