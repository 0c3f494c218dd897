"""/healthz, /readyz and /metrics: for Kubernetes and Prometheus.

They take no `Access`: no token and no rate limit can ever refuse a probe or a scrape
(a refused liveness probe restarts a healthy pod, a refused scrape hides an incident).
"""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from pipeline.service.contract import Health, ModelInfo, Readiness
from pipeline.service.metrics import CONTENT_TYPE
from pipeline.service.state import ServiceState


def add_routes(routes: APIRouter, state: ServiceState) -> None:

    @routes.get("/healthz", response_model=Health, tags=["operations"], summary="Alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @routes.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready; reasons say why."}},
        tags=["operations"],
        summary="Ready: a model is loaded and the score store answers",
    )
    async def readyz() -> JSONResponse:
        reasons = []
        model = state.models.current
        if model is None:
            reasons.append(f"no model loaded: {state.models.last_error}")
        try:
            reachable = await asyncio.wait_for(asyncio.to_thread(state.store.ping), 5.0)
        except TimeoutError:
            reachable = False
        if not reachable:
            reasons.append(f"score store {state.store.safe_url} does not answer")
        if not state.scoring.running:
            reasons.append("the scoring or write path is stopped")
        body = Readiness(
            status="not ready" if reasons else "ready",
            reasons=reasons,
            model=None if model is None else ModelInfo(**model.info()),
            challenger=None
            if (shadow := state.challenger_model) is None
            else ModelInfo(**shadow.info()),
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=503 if reasons else 200)

    @routes.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
        tags=["operations"],
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        await state.refresh_label_times()
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)
