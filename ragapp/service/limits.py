"""Back-pressure: request bodies have a size limit, and generation requests wait in a bounded queue.

Generation is CPU- or GPU-bound and runs one request at a time per process; queueing more than a few
only makes everyone wait. Past `size` waiting or running requests the server answers 503 with a
Retry-After estimated from recent generation times, so clients back off instead of timing out.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the generation queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class GenerationQueue:
    def __init__(self, size: int):
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragapp-generate")
        self._lock = threading.Lock()
        self._depth = 0
        self._recent: deque[float] = deque(maxlen=20)

    @property
    def depth(self) -> int:
        return self._depth

    def retry_after(self) -> int:
        typical = sorted(self._recent)[len(self._recent) // 2] if self._recent else 5.0
        return max(1, min(300, math.ceil(typical * self._depth)))

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the generation thread; raises QueueFull instead of waiting when `size` are ahead."""
        with self._lock:
            if self._depth >= self.size:
                raise QueueFull(self.retry_after())
            self._depth += 1

        def run() -> T:
            started = time.monotonic()
            try:
                return fn()
            finally:
                self._recent.append(time.monotonic() - started)
                with self._lock:
                    self._depth -= 1

        return self._executor.submit(run)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a 413 for bodies over `limit_for(path)` bytes, declared or actually sent."""

    def __init__(self, app: Any, limit_for: Callable[[str, str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            # The framework may catch BodyTooLarge and answer something else (a 400): answer 413 instead.
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await _too_large(send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Callable[..., Any], limit: int) -> None:
    body = json.dumps(
        {"error": {"message": f"request body over {limit} bytes", "type": "request_too_large", "code": 413}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
