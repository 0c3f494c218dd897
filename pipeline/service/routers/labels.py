"""POST /v1/labels: ground truth for stored scores, as an idempotent upsert."""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from pipeline.service.access import Access
from pipeline.service.contract import (
    FieldError,
    LabelResult,
    ValidationProblem,
    label_request_model,
)
from pipeline.service.routers.common import INVALID, require_json
from pipeline.service.scoring import API_CHANNEL
from pipeline.service.state import ServiceState
from pipeline.store import utcnow


def add_routes(routes: APIRouter, state: ServiceState, access: Access) -> None:
    label_request = label_request_model(state.settings.contract, state.config.max_labels)

    @routes.post(
        "/v1/labels",
        response_model=LabelResult,
        dependencies=[*access.requires("label"), Depends(require_json)],
        responses={
            **INVALID,
            **access.responses("label"),
            404: {
                "model": ValidationProblem,
                "description": "A score_id names no stored score of this environment; "
                "nothing was stored.",
            },
        },
        tags=["ground truth"],
        summary="Ground truth for stored scores (by score id or record id); idempotent",
    )
    async def labels(body: label_request) -> LabelResult:  # type: ignore[valid-type]
        """Upsert labels: sending the same labels again changes nothing, a new label for
        the same record replaces the old one. One unknown score id rejects the whole
        request (404), so a batch of labels is stored entirely or not at all."""
        items = body.labels
        score_ids = [getattr(item, "score_id", None) for item in items]
        wanted = [score_id for score_id in score_ids if score_id is not None]
        known = await asyncio.to_thread(state.store.record_ids_for_scores, wanted) if wanted else {}
        by_record_ids = state.pseudonymise(
            [
                item.record_id
                for item, score_id in zip(items, score_ids, strict=True)
                if score_id is None
            ]
        )
        problems: list[dict[str, Any]] = []
        rows: dict[str, dict[str, Any]] = {}
        now = utcnow()
        source = API_CHANNEL if body.source == API_CHANNEL else f"{API_CHANNEL}:{body.source}"
        next_record = iter(by_record_ids)
        for index, (item, score_id) in enumerate(zip(items, score_ids, strict=True)):
            if score_id is not None:
                found = known.get(score_id)
                where = {
                    "loc": ["body", "labels", index, "score_id"],
                    "field": f"labels[{index}].score_id",
                    "value": score_id,
                }
                if found is None:
                    problems.append(
                        FieldError(
                            rule="unknown_score_id",
                            msg="no stored score has this id",
                            **where,
                        ).model_dump()
                    )
                    continue
                if found[0] != state.environment:
                    problems.append(
                        FieldError(
                            rule="other_environment",
                            msg=f"the score belongs to environment {found[0]!r}, not "
                            f"{state.environment!r}",
                            **where,
                        ).model_dump()
                    )
                    continue
                record_id = found[1]
            else:
                record_id = next(next_record)
            # The newest word on a record wins, also within one request.
            rows[record_id] = {
                "environment": state.environment,
                "record_id": record_id,
                "label": item.label,
                "source": source,
                "labeled_at": now,
            }
        if problems:
            # 404: the request is well-formed, but names scores this service does not hold.
            raise HTTPException(404, detail=problems)
        stored = await asyncio.to_thread(state.store.upsert_labels, list(rows.values()))
        state.labels_arrived()
        return LabelResult(
            stored=stored,
            environment=state.environment,
            by_score_id=len(wanted),
            by_record_id=len(by_record_ids),
        )
