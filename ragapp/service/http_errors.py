"""Errors as the HTTP API shows them: JSON in OpenAI's shape, `{"error": {"message", "type", "code"}}`.

Routes raise `ApiError` (or a `RagappError`, mapped by `status_of`); the handlers `create_app` installs
turn every exception into this body, whatever raised it.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ragapp.errors import (
    Conflict,
    EmptyWorkspace,
    GenerationError,
    NotFound,
    RagappError,
    UsageError,
    WorkspaceError,
)
from ragapp.service import schemas as s

CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, never seen by the client
ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request_error",
    499: "client_closed_request",
    502: "generation_error",
    503: "overloaded_error",
}
STATUS_OF: list[tuple[type[RagappError], int]] = [
    (NotFound, 404),
    (UsageError, 400),
    (Conflict, 409),
    (EmptyWorkspace, 409),
    (WorkspaceError, 409),
    (GenerationError, 502),
]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses: each an `Error` body."""
    return {code: {"model": s.Error, "description": ERRORS[code]} for code in codes}


# Every route can answer these; routes declare their own extras (415 upload, 502 generation).
RESPONSES = error_responses(400, 401, 403, 404, 409, 413, 422, 503)


class ApiError(Exception):
    """An error with its HTTP status (and headers, such as Retry-After), raised by routes and dependencies."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ClientGone(Exception):
    """The client hung up: generation stops at the next token, and nobody reads the 499."""


def status_of(exc: RagappError) -> int:
    return next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 500)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERRORS.get(status, "server_error"), "code": status}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)
