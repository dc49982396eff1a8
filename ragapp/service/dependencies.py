"""What routes are given through FastAPI's `Depends`: the server's `Service`, the caller's key, an admin
check, and the App of the collection named in the path.

Dependencies run before the request body is read and validated, so a caller without the right key is
refused (401/403) before anything about the body is said.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ragapp.app import App
from ragapp.service.keys import ApiKey
from ragapp.service.service import Service


def get_service(request: Request) -> Service:
    """The server's `Service`, set by `create_app`."""
    found: Service = request.app.state.service
    return found


ServiceDep = Annotated[Service, Depends(get_service)]


def principal(request: Request, service: ServiceDep) -> ApiKey | None:
    return service.principal(request)


Key = Annotated[ApiKey | None, Depends(principal)]


def admin_key(key: Key) -> ApiKey | None:
    """The caller's key if it may manage (any key when there are none); 403 otherwise."""
    Service.admin(key)
    return key


AdminKey = Annotated[ApiKey | None, Depends(admin_key)]


def collection_app(collection: str, key: Key, service: ServiceDep) -> App:
    """The App of path parameter `collection`, if the key can read it (403), and it exists (404)."""
    return service.readable(key, collection)


CollectionApp = Annotated[App, Depends(collection_app)]
