"""Health and metrics: what a load balancer and Prometheus ask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from ragapp.service import schemas as s
from ragapp.service.dependencies import AdminKey, ServiceDep
from ragapp.service.telemetry import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=s.Health)
def healthz(service: ServiceDep) -> dict[str, Any]:
    """Liveness and readiness: the database answers. Needs no key."""
    return {
        "status": "ok",
        "collections": len(service.collections.names()),
        "generation_queue": service.queue.depth,
    }


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(service: ServiceDep, _: AdminKey) -> Response:
    """Prometheus metrics (an admin key when keys are configured)."""
    return Response(service.telemetry.render(), media_type=CONTENT_TYPE)
