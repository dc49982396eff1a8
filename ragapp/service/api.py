"""The HTTP API: a thin FastAPI layer over `App`, one per collection.

Retrieval-only requests run on the server's thread pool; anything that generates goes through the
bounded generation queue (one at a time, 503 + Retry-After when full). Errors are JSON in OpenAI's
shape, `{"error": {"message", "type", "code"}}`, whatever raised them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import ragapp
from ragapp.answer import Answer
from ragapp.app import App
from ragapp.connectors.filesystem import SUPPORTED_SUFFIXES
from ragapp.errors import (
    Conflict,
    EmptyWorkspace,
    GenerationError,
    NotFound,
    RagappError,
    UsageError,
    WorkspaceError,
)
from ragapp.generators import close_loaded
from ragapp.search import Filters
from ragapp.service import schemas as s
from ragapp.service.collections import DEFAULT, UPLOADS, Collections, check_name
from ragapp.service.conversations import Conversations, Turn, condense, history_from_messages
from ragapp.service.jobs import Jobs
from ragapp.service.keys import ApiKey, KeyStore
from ragapp.service.limits import BodyLimit, GenerationQueue, QueueFull
from ragapp.service.names import invisible_character
from ragapp.service.telemetry import CONTENT_TYPE, Telemetry

UPLOAD_PATH = re.compile(r"/v1/collections/[^/]+/documents")
DISCONNECT_POLL_S = 0.25  # how often a non-streamed generation checks that its client is still there
CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, never seen by the client
T = TypeVar("T")
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
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERRORS.get(status, "server_error"), "code": status}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


class Service:
    """Everything a server process holds: collections, keys, conversations, jobs, queue, metrics."""

    def __init__(self, workspace: Path):
        self.root = App(workspace)
        self.settings = self.root.config.server
        self.store = self.root.open_store(create=True)
        self.collections = Collections(workspace, self.store)
        self.keys = KeyStore(self.store)
        self.conversations = Conversations(self.store)
        self.jobs = Jobs(self.store, self.collections)
        self.queue = GenerationQueue(self.settings.queue_size)
        self.telemetry = Telemetry()

    def close(self) -> None:
        self.jobs.stop()
        self.queue.close()
        self.collections.close()
        self.root.close()
        close_loaded()  # uvicorn ends a signalled process without atexit: stop vLLM's engine now

    # -- access -----------------------------------------------------------------------------------

    def principal(self, request: Request) -> ApiKey | None:
        """The caller's key; None when the workspace has no keys (then the server listens on loopback only)."""
        if not self.keys.required():
            return None
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(
                401, "an API key is required: send `Authorization: Bearer <key>`", {"WWW-Authenticate": "Bearer"}
            )
        key = self.keys.verify(secret.strip())
        if key is None:
            raise ApiError(401, "the API key is not valid (unknown or revoked)", {"WWW-Authenticate": "Bearer"})
        return key

    def readable(self, key: ApiKey | None, collection: str) -> App:
        if key is not None and not key.can_read(collection):
            raise ApiError(403, f"this API key cannot read collection {collection!r}")
        return self.collections.app(collection)

    def visible(self, key: ApiKey | None) -> list[str]:
        """The collections `key` can read."""
        return [n for n in self.collections.names() if key is None or key.can_read(n)]

    def history(self, key: ApiKey | None, collection: str, conversation_id: str | None) -> list[Turn]:
        """The recent turns of a stored conversation (none without one); 404 for someone else's."""
        if not conversation_id:
            return []
        return self.conversations.history(conversation_id, collection, _key_id(key), self.settings.history_turns)

    @staticmethod
    def admin(key: ApiKey | None) -> None:
        if key is not None and not key.admin:
            raise ApiError(403, "this needs an admin API key (`ragapp keys create --admin`)")

    def body_limit(self, method: str, path: str) -> int:
        if method == "POST" and UPLOAD_PATH.fullmatch(path):
            return int(self.settings.max_upload_mb * 1e6)
        return self.settings.max_request_kb * 1024

    # -- answering --------------------------------------------------------------------------------

    def answer(
        self,
        app: App,
        question: str,
        history: list[Turn],
        retrieval: s.Retrieval,
        generation: dict[str, Any],
        on_token: Callable[[str], None] | None = None,
        gone: threading.Event | None = None,
    ) -> tuple[Answer, str]:
        """(answer, standalone question); runs on the generation thread. Once `gone` is set (the client hung
        up) it stops at the next step or token."""
        mark = time.perf_counter()
        window = min(app.config.generation.context_window, app.generator.context_window)
        standalone = condense(app.generator, history, question, window)
        condense_s = time.perf_counter() - mark
        if gone is not None and gone.is_set():
            raise _ClientGone
        answer = app.ask(
            standalone,
            retrieval.k,
            generation=generation,
            on_token=on_token,
            mode=retrieval.mode,
            filters=Filters.of(retrieval.filters),
        )
        answer.timings["condense_s"] = condense_s
        return answer, standalone

    def record(
        self,
        collection: str,
        key: ApiKey | None,
        conversation_id: str | None,
        question: str,
        standalone: str,
        answer: Answer,
    ) -> str:
        conversation_id = conversation_id or self.conversations.start(collection, _key_id(key))
        citations = [vars(c) for c in answer.citations]
        self.conversations.add(conversation_id, question, standalone, answer.answer, citations)
        tokens = self.telemetry.tokens
        tokens.labels("prompt").inc(answer.timings.get("prompt_tokens", 0))
        tokens.labels("completion").inc(answer.timings.get("completion_tokens", 0))
        return conversation_id

    async def generate(self, request: Request, work: Callable[[threading.Event, Callable[[str], None]], T]) -> T:
        """`work(gone, on_token)` on the generation queue, stopped when the client disconnects.

        A non-streamed answer is generated token by token too, so that a client that hangs up (a proxy
        timeout, a closed tab) stops the generation within a token instead of holding the queue for
        nobody: `on_token` raises once `gone` is set. Then the request ends with a 499 that nobody reads.
        """
        gone = threading.Event()

        def on_token(_: str) -> None:
            if gone.is_set():
                raise _ClientGone

        def run() -> T:
            if gone.is_set():  # hung up while waiting in the queue
                raise _ClientGone
            return work(gone, on_token)

        future = asyncio.wrap_future(self.submit(run))
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if done:
                    return future.result()
                if await request.is_disconnected():
                    gone.set()
                    with contextlib.suppress(Exception):
                        await future  # it stops at the next token; the queue is free again when this returns
                    raise _ClientGone
        finally:
            gone.set()  # the request ended in any other way (cancelled): stop generating too

    def submit(self, work: Callable[[], Any]) -> Any:
        try:
            future = self.queue.submit(work)
        except QueueFull as exc:
            self.telemetry.rejected.inc()
            raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        finally:
            self.telemetry.queue_depth.set(self.queue.depth)
        future.add_done_callback(lambda _: self.telemetry.queue_depth.set(self.queue.depth))
        return future


def _status(exc: RagappError) -> int:
    return next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 500)


class _Metrics:
    """ASGI middleware counting requests by route template and timing them to their last byte."""

    def __init__(self, app: Any, telemetry: Callable[[], Telemetry]):
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
            t = self.telemetry()
            t.requests.labels(scope["method"], route, str(status[0])).inc()
            t.latency.labels(route).observe(time.perf_counter() - started)


def _widget_file(name: str) -> str:
    return resources.files("ragapp.service").joinpath("widget", name).read_text(encoding="utf-8")


def create_app(workspace: Path) -> FastAPI:
    service = Service(workspace)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.jobs.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.close)

    api = FastAPI(
        title="ragapp",
        version=ragapp.__version__,
        summary="Answers with numbered citations from your documents; OpenAI-compatible chat.",
        lifespan=lifespan,
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
    api.add_middleware(_Metrics, telemetry=lambda: service.telemetry)

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.headers)

    @api.exception_handler(RagappError)
    async def _ragapp_error(_: Request, exc: RagappError) -> JSONResponse:
        return error_response(_status(exc), str(exc))

    @api.exception_handler(_ClientGone)
    async def _client_gone(_: Request, __: _ClientGone) -> Response:
        return error_response(CLIENT_GONE, "the client disconnected; the generation was stopped")

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
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
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error_response(422, "; ".join(parts))

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # This handler runs outside the CORS middleware: add its header, or a browser sees no message.
        response = error_response(500, f"internal error: {type(exc).__name__}")
        origin = request.headers.get("origin")
        if origin and origin in service.settings.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    # -- health and metrics -----------------------------------------------------------------------

    @api.get("/healthz", response_model=s.Health, tags=["operations"])
    def healthz() -> dict[str, Any]:
        """Liveness and readiness: the database answers. Needs no key."""
        return {
            "status": "ok",
            "collections": len(service.collections.names()),
            "generation_queue": service.queue.depth,
        }

    @api.get("/metrics", tags=["operations"], response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    def metrics(key: Key) -> Response:
        """Prometheus metrics (an admin key when keys are configured)."""
        service.admin(key)
        return Response(service.telemetry.render(), media_type=CONTENT_TYPE)

    # -- retrieval and answers --------------------------------------------------------------------

    @api.post("/v1/search", response_model=s.SearchResponse, tags=["answers"])
    def search(body: s.SearchRequest, key: Key) -> dict[str, Any]:
        """The passages most relevant to `query`, best first; no generation."""
        app = service.readable(key, body.collection)
        mark = time.perf_counter()
        hits = app.search(body.query, body.k, mode=body.mode, filters=body.filters)
        took = time.perf_counter() - mark
        return {
            "query": body.query,
            "collection": body.collection,
            "hits": [h.to_dict() for h in hits],
            "timings": {"search_s": round(took, 4)},
        }

    @api.post("/v1/query", response_model=s.QueryResponse, tags=["answers"], responses=error_responses(502))
    async def query(body: s.QueryRequest, key: Key, request: Request) -> dict[str, Any]:
        """Answer a question with numbered citations; pass `conversation_id` back to ask a follow-up."""
        app = service.readable(key, body.collection)
        history = service.history(key, body.collection, body.conversation_id)
        queued = time.perf_counter()

        def work(gone: threading.Event, on_token: Callable[[str], None]) -> tuple[Answer, str, float]:
            waited = time.perf_counter() - queued
            answer, standalone = service.answer(
                app, body.question, history, body, body.generation(), on_token=on_token, gone=gone
            )
            return answer, standalone, waited

        answer, standalone, waited = await service.generate(request, work)
        conversation_id = service.record(body.collection, key, body.conversation_id, body.question, standalone, answer)
        out = answer.to_dict()
        out.update(
            question=body.question,
            standalone_question=standalone,
            conversation_id=conversation_id,
            collection=body.collection,
            chunks=[h.to_dict() for h in answer.hits],
        )
        out["timings"]["queue_s"] = round(waited, 4)
        return out

    @api.post(
        "/v1/chat/completions",
        response_model=s.ChatResponse,
        tags=["openai"],
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream"},
            **error_responses(502),
        },
    )
    async def chat(body: s.ChatRequest, key: Key, request: Request) -> Any:
        """OpenAI-compatible chat: the last user message is answered from collection `model` with RAG.

        Earlier user/assistant messages (or the stored turns of `conversation_id`) are the history used to
        rewrite a follow-up. Citations come in the extra field `citations` (in the last chunk when streaming).
        """
        collection = body.model
        app = service.readable(key, collection)
        last = body.messages[-1]
        question = last.text().strip()
        if last.role != "user" or not question:
            raise ApiError(400, "the last message must be a user message with text")
        if body.conversation_id:
            history = service.history(key, collection, body.conversation_id)
        else:
            turns = history_from_messages([{"role": m.role, "content": m.text()} for m in body.messages[:-1]])
            history = turns[len(turns) - service.settings.history_turns :] if service.settings.history_turns else []
        generation = body.generation()
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        retrieval = s.Retrieval(k=body.k, mode=body.mode, filters=body.filters)

        def finish_reason(answer: Answer) -> str:
            limit = generation.get("max_new_tokens") or app.config.generation.max_new_tokens
            return "length" if answer.timings.get("completion_tokens", 0) >= limit else "stop"

        def usage(answer: Answer) -> dict[str, int]:
            p, c = int(answer.timings.get("prompt_tokens", 0)), int(answer.timings.get("completion_tokens", 0))
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        if not body.stream:
            answer, standalone = await service.generate(
                request,
                lambda gone, on_token: service.answer(
                    app, question, history, retrieval, generation, on_token=on_token, gone=gone
                ),
            )
            conversation_id = service.record(collection, key, body.conversation_id, question, standalone, answer)
            return {
                "id": completion_id,
                "created": created,
                "model": collection,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.answer},
                        "finish_reason": finish_reason(answer),
                    }
                ],
                "usage": usage(answer),
                "citations": [vars(c) for c in answer.citations],
                "conversation_id": conversation_id,
            }

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        gone = threading.Event()

        def put(kind: str, value: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def on_token(piece: str) -> None:
            if gone.is_set():  # the client hung up: stop generating for nobody
                raise _ClientGone
            put("token", piece)

        def work() -> None:
            if gone.is_set():  # hung up while waiting in the queue
                return
            try:
                put("done", service.answer(app, question, history, retrieval, generation, on_token, gone))
            except _ClientGone:
                pass
            except BaseException as exc:
                put("error", exc)

        service.submit(work)  # a full queue is a 503 now, before any byte of the stream

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": collection,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def stream() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                started = False
                while True:
                    kind, value = await events.get()
                    if kind == "token":
                        if not started:  # the answer is stripped; so is its stream
                            value = value.lstrip()
                            started = bool(value)
                        if value:
                            yield chunk({"content": value})
                    elif kind == "done":
                        answer, standalone = value
                        conversation_id = service.record(
                            collection, key, body.conversation_id, question, standalone, answer
                        )
                        yield chunk(
                            {},
                            finish_reason(answer),
                            usage=usage(answer),
                            citations=[vars(c) for c in answer.citations],
                            conversation_id=conversation_id,
                        )
                        break
                    else:
                        status = _status(value) if isinstance(value, RagappError) else 500
                        message = (
                            str(value) if isinstance(value, RagappError) else f"internal error: {type(value).__name__}"
                        )
                        yield f"data: {json.dumps(error_body(status, message))}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                gone.set()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @api.get("/v1/models", response_model=s.ModelList, tags=["openai"])
    def models(key: Key) -> dict[str, Any]:
        """The collections this key can read, as OpenAI models: pass one as `model`."""
        return {"data": [{"id": n, "created": 0} for n in service.visible(key)]}

    @api.get("/v1/conversations/{conversation_id}", response_model=s.Conversation, tags=["answers"])
    def conversation(conversation_id: str, key: Key, collection: str = DEFAULT) -> dict[str, Any]:
        """The stored turns of a conversation (only the key that started it can read it)."""
        service.readable(key, collection)
        turns = service.conversations.turns(conversation_id, collection, _key_id(key))
        return {"id": conversation_id, "collection": collection, "turns": turns}

    # -- collections and documents ----------------------------------------------------------------

    def info(name: str) -> dict[str, Any]:
        app = service.collections.app(name)
        counts = app.open_store().counts() if app.has_store() else {"documents": 0, "chunks": 0}
        return {"name": name, "documents": counts["documents"], "chunks": counts["chunks"]}

    @api.get("/v1/collections", response_model=s.CollectionList, tags=["collections"])
    def list_collections(key: Key) -> dict[str, Any]:
        """The collections this key can read."""
        return {"collections": [info(n) for n in service.visible(key)]}

    @api.post("/v1/collections", response_model=s.CollectionInfo, status_code=201, tags=["collections"])
    def create_collection(body: s.CollectionRequest, key: Key) -> dict[str, Any]:
        """A new empty collection (admin)."""
        service.admin(key)
        check_name(body.name)
        # Keys still scoped to this name are leftovers of a deleted collection: the new one is not theirs.
        service.keys.forget_collection(body.name)
        service.collections.create(body.name)
        return info(body.name)

    @api.delete("/v1/collections/{collection}", status_code=204, tags=["collections"])
    def delete_collection(collection: str, key: Key) -> Response:
        """Delete a collection with its documents, files, conversations and jobs (admin).

        It leaves every key's scope: a key that read only this collection is revoked, so a collection
        created later under the same name is readable by no old key."""
        service.admin(key)
        if service.jobs.busy(collection):
            raise ApiError(
                409, f"collection {collection!r} has ingest jobs queued or running; delete it when they are done"
            )
        service.collections.delete(collection)
        service.keys.forget_collection(collection)
        service.conversations.drop_collection(collection)
        service.jobs.drop_collection(collection)
        return Response(status_code=204)

    @api.get("/v1/collections/{collection}/documents", response_model=s.DocumentList, tags=["collections"])
    def list_documents(collection: str, key: Key) -> dict[str, Any]:
        """The documents of a collection, with their ids."""
        app = service.readable(key, collection)
        return {"collection": collection, "documents": app.documents()}

    @api.post(
        "/v1/collections/{collection}/documents",
        response_model=s.Job,
        status_code=202,
        tags=["collections"],
        responses=error_responses(415),
    )
    def upload(
        collection: str, key: Key, files: Annotated[list[UploadFile], File(description="Files to ingest")]
    ) -> dict[str, Any]:
        """Upload files (admin); they are ingested in the background: poll `GET /v1/jobs/{id}`.

        Every file is checked first (a plain name, a supported type, within ingest.max_file_mb); one bad file
        refuses the whole upload and nothing is written.
        """
        service.admin(key)
        app = service.readable(key, collection)
        limit = int(app.config.ingest.max_file_mb * 1e6)
        names = [_upload_name(f.filename or "") for f in files]
        if len(set(names)) != len(names):
            raise ApiError(400, "two uploaded files have the same name")
        for f, name in zip(files, names, strict=True):
            size = f.size if f.size is not None else len(f.file.read())
            if size > limit:
                raise ApiError(
                    413, f"{name}: {size} bytes is over ingest.max_file_mb ({app.config.ingest.max_file_mb} MB)"
                )
        job_id = service.jobs.new_id()
        staged = service.jobs.staging(collection, job_id)
        staged.mkdir(parents=True)
        try:
            for f, name in zip(files, names, strict=True):
                f.file.seek(0)
                with open(staged / name, "xb") as out:
                    shutil.copyfileobj(f.file, out)
            return service.jobs.submit(job_id, collection, names)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    @api.delete("/v1/collections/{collection}/documents/{document_id}", response_model=s.Removed, tags=["collections"])
    def delete_document(collection: str, document_id: int, key: Key) -> dict[str, Any]:
        """Remove a document from the collection's store and indexes (admin); an uploaded file is deleted too."""
        service.admin(key)
        app = service.readable(key, collection)
        found = app.documents([document_id])
        if not found:
            raise ApiError(404, f"no document {document_id} in collection {collection!r}")
        report = app.remove_documents([document_id])
        source = Path(found[0]["source"])
        if source.parent == (app.workspace / "uploads").resolve():
            source.unlink(missing_ok=True)
        return {"removed": report.removed, "chunks_removed": report.chunks_removed}

    def uploaded(app: App, collection: str) -> list[dict[str, Any]]:
        folder = service.collections.folder(collection) / UPLOADS
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        documents = {d["source"]: d["id"] for d in app.documents()} if files else {}
        outcomes = service.jobs.outcomes(collection) if files else {}
        out = []
        for path in files:
            document_id = documents.get(str(path.resolve()))
            outcome = outcomes.get(path.name, {})
            if document_id is not None:
                status, reason = "ingested", None
            elif outcome.get("status") in ("queued", "running"):
                status, reason = "pending", None
            else:
                status = "failed"
                reason = outcome.get("reason") or "not ingested (no upload job records why): upload it again"
            size = path.stat().st_size
            out.append(
                {
                    "name": path.name,
                    "size": size,
                    "status": status,
                    "document_id": document_id,
                    "job_id": outcome.get("job_id"),
                    "reason": reason,
                }
            )
        return out

    @api.get("/v1/collections/{collection}/uploads", response_model=s.UploadList, tags=["collections"])
    def list_uploads(collection: str, key: Key) -> dict[str, Any]:
        """The uploaded files of a collection: ingested (with the document id), pending, or failed with the reason."""
        app = service.readable(key, collection)
        return {"collection": collection, "uploads": uploaded(app, collection)}

    @api.delete("/v1/collections/{collection}/uploads/{name}", response_model=s.UploadRemoved, tags=["collections"])
    def delete_upload(collection: str, name: str, key: Key) -> dict[str, Any]:
        """Delete an uploaded file (admin): one that failed to ingest, or an ingested one with its document."""
        service.admin(key)
        app = service.readable(key, collection)
        _plain_name(name)
        path = service.collections.folder(collection) / UPLOADS / name
        with service.jobs.moving:  # no job moves a file into uploads/ meanwhile
            if not path.is_file():
                raise ApiError(404, f"no uploaded file {name!r} in collection {collection!r}")
            if service.jobs.pending(collection, name):
                raise ApiError(409, f"{name}: an upload job with this file is queued or running; retry when it is done")
            source = str(path.resolve())
            ids = [d["id"] for d in app.documents() if d["source"] == source]
            report = app.remove_documents(ids) if ids else None
            path.unlink(missing_ok=True)
        return {
            "name": name,
            "removed": report.removed if report else 0,
            "chunks_removed": report.chunks_removed if report else 0,
        }

    @api.get("/v1/jobs/{job_id}", response_model=s.Job, tags=["collections"])
    def job(job_id: str, key: Key) -> dict[str, Any]:
        """An ingest job: queued, running, completed (with its ingest report) or failed (with the error)."""
        found = service.jobs.get(job_id)
        if key is not None and not key.can_read(found["collection"]):
            raise ApiError(404, f"no job {job_id!r}")
        return found

    # -- the widget -------------------------------------------------------------------------------

    @api.get("/widget", response_class=HTMLResponse, tags=["widget"])
    def widget_page() -> HTMLResponse:
        """A chat page over the API (`?collection=NAME&key=KEY`); the same UI as `/widget.js`."""
        return HTMLResponse(_widget_file("index.html"))

    @api.get(
        "/widget.js", tags=["widget"], response_class=Response, responses={200: {"content": {"text/javascript": {}}}}
    )
    def widget_script() -> Response:
        """`<script src=".../widget.js" data-collection="NAME" data-key="KEY"></script>` adds a chat box to a page."""
        return Response(_widget_file("widget.js"), media_type="text/javascript")

    return api


def _key_id(key: ApiKey | None) -> int | None:
    return key.id if key is not None else None


def _principal(request: Request) -> ApiKey | None:
    service: Service = request.app.state.service
    return service.principal(request)


Key = Annotated[ApiKey | None, Depends(_principal)]


class _ClientGone(Exception):
    pass


def _plain_name(name: str) -> str:
    """`name` if it is a plain file name that displays as it is; traversal and oddities are refused (400)."""
    if not name:
        raise ApiError(400, "upload has an empty file name: send every file with its name")
    problem = invisible_character(name)
    if problem is not None:
        raise ApiError(400, f"upload name {name!r} {problem}: rename the file")
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise ApiError(400, f"upload name {name!r} is not a plain file name")
    return name


def _upload_name(name: str) -> str:
    """An upload's name as given, if it is a plain supported file name."""
    _plain_name(name)
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ApiError(415, f"{name}: unsupported file type {suffix or '(no extension)'!r} (supported: {kinds})")
    return name
