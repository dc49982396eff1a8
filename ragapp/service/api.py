"""The HTTP API: a thin FastAPI layer over `App`, one per collection.

`create_app` builds the application around a `Service` (what one server process holds): middleware,
error handlers, and one router per resource (routes_*.py), which get the `Service`, the caller's key
and the collection's App through dependencies (dependencies.py). Errors are JSON in OpenAI's shape,
`{"error": {"message", "type", "code"}}`, whatever raised them (http_errors.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import ragapp
from ragapp.errors import RagappError
from ragapp.service import (
    routes_answers,
    routes_chat,
    routes_collections,
    routes_conversations,
    routes_documents,
    routes_jobs,
    routes_operations,
    routes_widget,
)
from ragapp.service.http_errors import (
    CLIENT_GONE,
    RESPONSES,
    ApiError,
    ClientGone,
    error_response,
    status_of,
)
from ragapp.service.limits import BodyLimit
from ragapp.service.service import UPLOAD_PATH, Service
from ragapp.service.telemetry import Telemetry

# In the order of the OpenAPI schema (schemathesis fuzzes the answering operations before the destructive ones).
ROUTERS = (
    routes_operations,
    routes_answers,
    routes_chat,
    routes_conversations,
    routes_collections,
    routes_documents,
    routes_jobs,
    routes_widget,
)


class _Metrics:
    """ASGI middleware counting requests by route template and timing them to their last byte."""

    def __init__(self, app: Any, telemetry: Telemetry):
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.telemetry.requests.labels(scope["method"], route, str(status[0])).inc()
            self.telemetry.latency.labels(route).observe(time.perf_counter() - started)


@asynccontextmanager
async def _lifespan(api: FastAPI) -> AsyncIterator[None]:
    service: Service = api.state.service
    service.jobs.start()
    try:
        yield
    finally:
        await asyncio.to_thread(service.close)


def create_app(service: Service | str | os.PathLike[str]) -> FastAPI:
    """The FastAPI application over `service`, or over a `Service` of the workspace folder given.

    The application owns the service: its lifespan starts the upload job worker and closes the service.
    """
    if not isinstance(service, Service):
        service = Service(Path(service))
    api = FastAPI(
        title="ragapp",
        version=ragapp.__version__,
        summary="Answers with numbered citations from your documents; OpenAI-compatible chat.",
        lifespan=_lifespan,
        responses=RESPONSES,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN, which an offline server cannot
        # reach; the schema itself is served at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    api.state.service = service
    api.add_middleware(BodyLimit, limit_for=service.body_limit)
    if service.settings.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=service.settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
            expose_headers=["Retry-After"],  # the widget tells the user when to try again
        )
    api.add_middleware(_Metrics, telemetry=service.telemetry)
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(RagappError, _ragapp_error)
    api.add_exception_handler(ClientGone, _client_gone)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(StarletteHTTPException, _http)
    api.add_exception_handler(Exception, _unexpected)
    for module in ROUTERS:
        api.include_router(module.router)
    return api


# -- exception handlers: every error is an `error_response` -------------------------------------------


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, str(exc), exc.headers)


async def _ragapp_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagappError)
    return error_response(status_of(exc), str(exc))


async def _client_gone(_: Request, __: Exception) -> Response:
    return error_response(CLIENT_GONE, "the client disconnected; the generation was stopped")


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the body is not valid JSON")
    if UPLOAD_PATH.fullmatch(request.url.path):
        # A multipart part without a file name arrives as text, not as a file.
        where = [tuple(e.get("loc", ())) for e in errors]
        unnamed = [loc[2] for loc in where if len(loc) > 2 and loc[:2] == ("body", "files")]
        if unnamed:
            return error_response(
                400,
                f"upload has an empty file name (part {int(unnamed[0]) + 1} of `files`): "
                "send every file with its name (curl: -F files=@PATH)",
            )
    parts = []
    for e in errors[:5]:
        where_ = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where_}: {e.get('msg')}" if where_ else str(e.get("msg")))
    return error_response(422, "; ".join(parts))


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # This handler runs outside the CORS middleware: add its header, or a browser sees no message.
    response = error_response(500, f"internal error: {type(exc).__name__}")
    origin = request.headers.get("origin")
    service: Service = request.app.state.service
    if origin and origin in service.settings.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response
