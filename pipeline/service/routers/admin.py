"""POST /v1/admin/reload: re-read the model reference now, for an operator or a CI job."""

from fastapi import APIRouter, HTTPException

from pipeline.service.access import Access
from pipeline.service.contract import ModelInfo, ReloadResult
from pipeline.service.state import ServiceState


def add_routes(routes: APIRouter, state: ServiceState, access: Access) -> None:
    @routes.post(
        "/v1/admin/reload",
        response_model=ReloadResult,
        dependencies=access.requires("admin"),
        responses=access.responses("admin"),
        tags=["operations"],
        summary="Re-read the model reference now (instead of waiting for the next poll)",
    )
    async def reload() -> ReloadResult:
        try:
            outcome, challenger = await state.refresh_models()
        except Exception as error:
            current = state.models.current
            still = f"; still serving version {current.version}" if current else ""
            raise HTTPException(503, f"reload failed: {error}{still}") from None
        return ReloadResult(
            changed=outcome.changed,
            previous_version=outcome.previous_version,
            model=None if outcome.current is None else ModelInfo(**outcome.current.info()),
            challenger=None if challenger is None else ModelInfo(**challenger.info()),
        )
