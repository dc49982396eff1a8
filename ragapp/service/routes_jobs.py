"""Ingest jobs of uploads: queued, running, completed or failed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ragapp.service import schemas as s
from ragapp.service.dependencies import Key, ServiceDep
from ragapp.service.http_errors import ApiError

router = APIRouter(tags=["collections"])


@router.get("/v1/jobs/{job_id}", response_model=s.Job)
def job(job_id: str, key: Key, service: ServiceDep) -> dict[str, Any]:
    """An ingest job: queued, running, completed (with its ingest report) or failed (with the error)."""
    found = service.jobs.get(job_id)
    if key is not None and not key.can_read(found["collection"]):
        raise ApiError(404, f"no job {job_id!r}")
    return found
