"""The FastAPI application: one app per environment, assembled from the service's parts.

`create_app` only wires: `ServiceState` (pipeline.service.state) holds what runs,
`ScoringService` (pipeline.service.scoring) the write path of POST /v1/score and why
it is shaped as it is, `Access` (pipeline.service.access) tokens and rate limits, and
`pipeline.service.routers` the endpoints, one router per concern. What stays here is
what belongs to the app as a whole: its lifespan, its error answers and its
middleware.
"""

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.config import Settings
from pipeline.errors import CrispError, ServiceUnavailable
from pipeline.service import console
from pipeline.service import errors as service_errors
from pipeline.service.access import Access
from pipeline.service.config import ROLES, STRICT_ENVIRONMENTS, TOKEN_ENV, TOKENS_ENV, ServiceConfig
from pipeline.service.middleware import BodyLimit, RequestMetrics
from pipeline.service.routers import admin, audit, labels, probes, scoring
from pipeline.service.state import ServiceState

log = logging.getLogger("pipeline.service")


def _app_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crispml")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0"


def create_app(
    settings: Settings, config: ServiceConfig | None = None, model_uri: str | None = None
) -> FastAPI:
    """Build the app for one environment. Nothing blocking happens until its lifespan starts
    (or `app.state.service.prepare()` is called, as `crispml serve` does first)."""
    config = config or ServiceConfig.from_env()
    state = ServiceState(settings, config, model_uri)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="CrispML scoring service",
        version=_app_version(),
        description=(
            f"Online scoring for environment **{settings.env}**. Every answered score is "
            "stored, with its lineage, before the answer is sent. Records follow the data "
            "contract of params.yaml; endpoints need a bearer token with their role "
            "(score, read, label, admin), except where this deployment leaves them open."
        ),
        lifespan=lifespan,
        # qa/prod: no endpoint but the probes and /metrics answers without a token, so
        # the schema and its pages (/openapi.json, /docs, /redoc) are not served there.
        openapi_url=None if settings.env in STRICT_ENVIRONMENTS else "/openapi.json",
    )
    app.state.service = state
    access = Access(config, settings.env)
    _install_error_answers(app)
    # Onto the app's own router, in the OpenAPI schema's order (see pipeline.service.routers).
    scoring.add_routes(app.router, state, access)
    labels.add_routes(app.router, state, access)
    audit.add_routes(app.router, state, access)
    admin.add_routes(app.router, state, access)
    probes.add_routes(app.router, state)
    console.add_routes(app.router, state, access)  # /console: pages, not in the schema
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)

    closed = [role for role in ROLES if role not in access.open_roles]
    if disabled := [role for role in closed if not config.has_token_for(role)]:
        log.warning(
            "no token for roles %s (%s, %s): they answer 503", disabled, TOKEN_ENV, TOKENS_ENV
        )
    log.info("open without a token: %s", sorted(access.open_roles) or "nothing (but the probes)")
    if access.limiter is not None:
        log.info("rate limit per token (or address, where open): %s", access.limiter.spec)
    return app


def _install_error_answers(app: FastAPI) -> None:
    """Every error is JSON in the shape the OpenAPI schema publishes, and none echoes
    input that a response or a log line cannot safely carry."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Whatever the input, the answer is a 422: an entry that still cannot be rendered
        # (it should not exist: `field_errors` makes every string safe) costs its detail,
        # never a 500 with a trace.
        try:
            entries = service_errors.field_errors(exc.errors())
            return JSONResponse(
                {"error": service_errors.summary(entries), "detail": entries}, status_code=422
            )
        except Exception as error:
            log.warning("validation errors not rendered: %s", type(error).__name__)
            return JSONResponse({"error": "invalid request", "detail": []}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): for a JSON
            # API that is malformed JSON, answered like any other malformed JSON.
            entry = {
                "loc": ["body"],
                "field": "body",
                "rule": "json_invalid",
                "msg": f"the body is not valid JSON: {type(exc.__cause__).__name__}",
                "value": None,
            }
            return JSONResponse(
                {"error": service_errors.summary([entry]), "detail": [entry]}, status_code=422
            )
        if isinstance(exc.detail, list):  # field errors raised by a route (e.g. labels)
            entries = [service_errors.safe_entry(entry) for entry in exc.detail]
            return JSONResponse(
                {"error": service_errors.summary(entries), "detail": entries},
                status_code=exc.status_code,
                headers=exc.headers,
            )
        detail = (
            exc.detail if not isinstance(exc.detail, str) else service_errors.safe_text(exc.detail)
        )
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(CrispError)
    async def _crisp(_request: Request, exc: CrispError) -> JSONResponse:
        status = 503 if isinstance(exc, ServiceUnavailable) else 500
        log.warning("request failed: %s", exc)
        return JSONResponse({"detail": str(exc) if status == 503 else "internal error"}, status)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log under an id; the client gets the id, never the trace.
        error_id = uuid.uuid4().hex[:12]
        log.error("unexpected error %s", error_id, exc_info=exc)
        return JSONResponse({"detail": f"internal error (id {error_id})"}, status_code=500)
