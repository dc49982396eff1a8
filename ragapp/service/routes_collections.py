"""Collections: list, create and delete the named workspaces one server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from ragapp.service import schemas as s
from ragapp.service.collections import check_name
from ragapp.service.dependencies import AdminKey, Key, ServiceDep
from ragapp.service.http_errors import ApiError
from ragapp.service.service import Service

router = APIRouter(tags=["collections"])


def info(service: Service, name: str) -> dict[str, Any]:
    app = service.collections.app(name)
    counts = app.open_store().counts() if app.has_store() else {"documents": 0, "chunks": 0}
    return {"name": name, "documents": counts["documents"], "chunks": counts["chunks"]}


@router.get("/v1/collections", response_model=s.CollectionList)
def list_collections(key: Key, service: ServiceDep) -> dict[str, Any]:
    """The collections this key can read."""
    return {"collections": [info(service, n) for n in service.visible(key)]}


@router.post("/v1/collections", response_model=s.CollectionInfo, status_code=201)
def create_collection(body: s.CollectionRequest, _: AdminKey, service: ServiceDep) -> dict[str, Any]:
    """A new empty collection (admin)."""
    check_name(body.name)
    # Keys still scoped to this name are leftovers of a deleted collection: the new one is not theirs.
    service.keys.forget_collection(body.name)
    service.collections.create(body.name)
    return info(service, body.name)


@router.delete("/v1/collections/{collection}", status_code=204)
def delete_collection(collection: str, _: AdminKey, service: ServiceDep) -> Response:
    """Delete a collection with its documents, files, conversations and jobs (admin).

    It leaves every key's scope: a key that read only this collection is revoked, so a collection
    created later under the same name is readable by no old key."""
    if service.jobs.busy(collection):
        raise ApiError(
            409, f"collection {collection!r} has ingest jobs queued or running; delete it when they are done"
        )
    service.collections.delete(collection)
    service.keys.forget_collection(collection)
    service.conversations.drop_collection(collection)
    service.jobs.drop_collection(collection)
    return Response(status_code=204)
