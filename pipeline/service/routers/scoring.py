"""POST /v1/score: HTTP around `ScoringService`, which validates, scores and stores."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException

from pipeline.service.access import Access
from pipeline.service.contract import Problem, ScoreResult, score_request_type
from pipeline.service.routers.common import INVALID, require_json
from pipeline.service.scoring import RecordsRefused, ScoringUnavailable
from pipeline.service.state import ServiceState


def add_routes(routes: APIRouter, state: ServiceState, access: Access) -> None:
    scoring = state.scoring
    max_batch = state.config.max_batch
    score_body = score_request_type(scoring.schema, max_batch)

    @routes.post(
        "/v1/score",
        response_model=ScoreResult | list[ScoreResult],
        dependencies=[*access.requires("score"), Depends(require_json)],
        responses={
            **INVALID,
            **access.responses("score"),
            503: {
                "model": Problem,
                "description": "No model loaded, or the store did not confirm "
                "the write: nothing was answered, retry.",
            },
        },
        tags=["scoring"],
        summary="Score one record or a batch; every score is stored before the answer",
    )
    async def score(
        body: Annotated[
            score_body,  # type: ignore[valid-type]
            Body(description=f"One record, or a JSON array of 1 to {max_batch} records."),
        ],
    ) -> Any:
        """Send a record (object) to get one result, or an array to get an array back.

        The answer is sent only after the score is committed to the score store. 503 means
        nothing was answered and the request may be retried.
        """
        batch = isinstance(body, list)
        try:
            results = await scoring.score(body if batch else [body])
        except RecordsRefused as refused:
            raise HTTPException(422, detail=refused.problems) from None
        except ScoringUnavailable as error:
            raise HTTPException(503, str(error)) from None
        return results if batch else results[0]
