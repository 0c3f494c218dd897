"""GET /v1/scores/{score_id} and GET /v1/report: reading back what the service stored."""

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from pipeline.service.access import Access
from pipeline.service.contract import (
    SCORE_ID_MAX_LENGTH,
    Problem,
    QualityReport,
    StoredScore,
    ValidationProblem,
    text_type,
)
from pipeline.service.report import NoReport, build_report
from pipeline.service.routers.common import INVALID, field_error
from pipeline.service.state import ServiceState


def _iso_datetime(value: Any) -> datetime:
    """Only ISO 8601 text: pydantic would also read 0.5 as a Unix time, which nobody means."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise PydanticCustomError(
        "iso_datetime", "Input should be an ISO 8601 date-time such as 2026-11-22T08:00:00Z"
    )


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime)]
# A score id in a path: the rules of every id (no control characters, not blank).
ScoreIdText = text_type(is_id=True, min_length=1, max_length=SCORE_ID_MAX_LENGTH)


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise field_error(
            422, name, "datetime_range", "is outside the representable range", value.isoformat()
        ) from None


def add_routes(routes: APIRouter, state: ServiceState, access: Access) -> None:
    @routes.get(
        "/v1/scores/{score_id}",
        response_model=StoredScore,
        dependencies=access.requires("read"),
        responses={
            **access.responses("read"),
            404: {
                "model": Problem,
                "description": "No stored score of this environment has this id.",
            },
            422: INVALID[422],
        },
        tags=["audit"],
        summary="A stored score with its lineage and, once known, its label",
    )
    async def get_score(
        score_id: Annotated[ScoreIdText, PathParam()],  # type: ignore[valid-type]
    ) -> Any:
        """A stored score of this service's environment; any other id, including one of a
        score of another environment, is a 404."""
        # Environments may share a store: a dev service must neither read a prod score and
        # its label, nor tell that the id exists (the same answer as for an unknown id).
        row = await asyncio.to_thread(state.store.get_score, score_id)
        if row is None or row["environment"] != state.environment:
            raise HTTPException(404, f"no stored score has id {score_id!r}")
        return row

    @routes.get(
        "/v1/report",
        response_model=QualityReport,
        dependencies=access.requires("read"),
        responses={
            **access.responses("read"),
            200: {"content": {"text/html": {}}, "description": "JSON, or HTML with format=html."},
            404: {
                "model": Problem,
                "description": "format=html, and no labelled scores in "
                "the window or Evidently could not build a report from them.",
            },
            422: {"model": ValidationProblem, "description": "Bad window or format."},
        },
        tags=["audit"],
        summary="Realised quality of the stored scores against their labels",
    )
    async def report(
        scored_from: Annotated[
            IsoDatetime, Query(alias="from", description="Scored at or after (ISO 8601).")
        ],
        scored_to: Annotated[
            IsoDatetime, Query(alias="to", description="Scored before (ISO 8601).")
        ],
        output: Annotated[Literal["json", "html"], Query(alias="format")] = "json",
    ) -> Any:
        """Verification of the stored scores in a window against the labels imported so
        far. `format=html` returns Evidently's report for people.

        The window is required: "everything ever stored" grows without end, and one
        request must not make the service read all of it. Above
        CRISPML_SERVICE_REPORT_MAX_ROWS scores in the window the report is computed on a
        random sample of that many (`sampled`, with the window's true count in `scores`).
        The read and the computation run in a worker thread, never on the event loop.
        """
        start, end = _utc(scored_from, "from"), _utc(scored_to, "to")
        assert start is not None and end is not None  # both are required parameters
        if start >= end:
            raise field_error(422, "to", "after_from", "must be later than 'from'", end.isoformat())
        async with state.report_lock:  # Evidently is CPU-heavy: one report at a time
            try:
                built = await asyncio.to_thread(build_report, state, start, end, output)
            except NoReport as error:
                raise HTTPException(404, str(error)) from None
        return HTMLResponse(built) if isinstance(built, str) else built
