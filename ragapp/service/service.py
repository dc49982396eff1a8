"""`Service`: everything one server process holds, handed to the routes through FastAPI dependencies.

Retrieval-only requests run on the server's thread pool; anything that generates goes through the
bounded generation queue (one at a time, 503 + Retry-After when full).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request

from ragapp.answer import Answer
from ragapp.app import App
from ragapp.generators import Generator, close_loaded
from ragapp.search import Filters
from ragapp.service import schemas as s
from ragapp.service.collections import Collections
from ragapp.service.conversations import Conversations, Turn, condense
from ragapp.service.http_errors import ApiError, ClientGone
from ragapp.service.jobs import Jobs
from ragapp.service.keys import ApiKey, KeyStore
from ragapp.service.limits import GenerationQueue, QueueFull
from ragapp.service.telemetry import Telemetry

UPLOAD_PATH = re.compile(r"/v1/collections/[^/]+/documents")
DISCONNECT_POLL_S = 0.25  # how often a non-streamed generation checks that its client is still there
T = TypeVar("T")


def key_id(key: ApiKey | None) -> int | None:
    return key.id if key is not None else None


class Service:
    """Everything a server process holds: collections, keys, conversations, jobs, queue, metrics.

    `config`: settings over the workspace's (the `ragapp` flags); every collection gets them too.
    `generator`: the one every collection answers with, for a host that has loaded its own (or a test's
    fake); by default each collection loads the one its config names, on first use.
    """

    def __init__(
        self, workspace: Path, config: dict[str, dict[str, Any]] | None = None, generator: Generator | None = None
    ):
        self.root = App(workspace, config=config)
        self.settings = self.root.config.server
        self.store = self.root.open_store(create=True)
        self.collections = Collections(workspace, self.store, config=config, generator=generator)
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

    def app(self, collection: str) -> App:
        """The App of a collection (404 when there is none)."""
        return self.collections.app(collection)

    def readable(self, key: ApiKey | None, collection: str) -> App:
        if key is not None and not key.can_read(collection):
            raise ApiError(403, f"this API key cannot read collection {collection!r}")
        return self.app(collection)

    def visible(self, key: ApiKey | None) -> list[str]:
        """The collections `key` can read."""
        return [n for n in self.collections.names() if key is None or key.can_read(n)]

    def history(self, key: ApiKey | None, collection: str, conversation_id: str | None) -> list[Turn]:
        """The recent turns of a stored conversation (none without one); 404 for someone else's."""
        if not conversation_id:
            return []
        return self.conversations.history(conversation_id, collection, key_id(key), self.settings.history_turns)

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
            raise ClientGone
        answer = app.ask(
            standalone,
            retrieval.k,
            generation=generation,
            on_token=on_token,
            mode=retrieval.mode,
            filters=Filters.of(retrieval.filters),
            rerank=retrieval.rerank,
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
        conversation_id = conversation_id or self.conversations.start(collection, key_id(key))
        self.conversations.add(conversation_id, question, standalone, answer)
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
                raise ClientGone

        def run() -> T:
            if gone.is_set():  # hung up while waiting in the queue
                raise ClientGone
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
                    raise ClientGone
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
