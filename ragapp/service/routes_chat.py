"""OpenAI-compatible chat: `/v1/chat/completions` (JSON, or server-sent events with `stream`) and
`/v1/models`, the collections a key can read. A collection is a `model`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ragapp.answer import Answer
from ragapp.app import App
from ragapp.errors import RagappError
from ragapp.service import schemas as s
from ragapp.service.conversations import Turn, history_from_messages
from ragapp.service.dependencies import Key, ServiceDep
from ragapp.service.http_errors import ApiError, ClientGone, error_body, error_responses, status_of
from ragapp.service.keys import ApiKey
from ragapp.service.service import Service

router = APIRouter(tags=["openai"])


def finish_reason(app: App, generation: dict[str, Any], answer: Answer) -> str:
    limit = generation.get("max_new_tokens") or app.config.generation.max_new_tokens
    return "length" if answer.timings.get("completion_tokens", 0) >= limit else "stop"


def usage(answer: Answer) -> dict[str, int]:
    p, c = int(answer.timings.get("prompt_tokens", 0)), int(answer.timings.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def attribution(answer: Answer) -> dict[str, Any]:
    """ragapp's extra fields of a reply, the same in JSON and in the stream's last chunk."""
    return {
        "citations": [vars(c) for c in answer.citations],
        "sentences": [sentence.to_dict() for sentence in answer.sentences],
        "abstained": answer.abstained,
    }


@router.post(
    "/v1/chat/completions",
    response_model=s.ChatResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream"},
        **error_responses(502),
    },
)
async def chat(body: s.ChatRequest, key: Key, request: Request, service: ServiceDep) -> Any:
    """OpenAI-compatible chat: the last user message is answered from collection `model` with RAG.

    Earlier user/assistant messages (or the stored turns of `conversation_id`) are the history used to
    rewrite a follow-up. Citations, the answer's sentences with their quotes and `abstained` come as extra
    fields (in the last chunk when streaming).
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
    retrieval = s.Retrieval(k=body.k, mode=body.mode, filters=body.filters, rerank=body.rerank)

    if body.stream:
        return StreamingResponse(
            stream(service, app, key, body, question, history, retrieval, generation, completion_id, created),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
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
                "finish_reason": finish_reason(app, generation, answer),
            }
        ],
        "usage": usage(answer),
        **attribution(answer),
        "conversation_id": conversation_id,
    }


def stream(
    service: Service,
    app: App,
    key: ApiKey | None,
    body: s.ChatRequest,
    question: str,
    history: list[Turn],
    retrieval: s.Retrieval,
    generation: dict[str, Any],
    completion_id: str,
    created: int,
) -> AsyncIterator[str]:
    """The answer as SSE chunks: the role, the tokens as they come, then the finish with usage, citations,
    sentences, `abstained`, the final `answer` and the conversation id, then `[DONE]`. Queued now, so that a
    full queue is a 503 before any byte.

    The final answer can differ from the text streamed: a draft found unsupported was streamed before the
    "not found" message that replaces it, so the finish's `answer` is always the final text. When the
    final text only extends what was streamed, the rest is sent as one more content delta first (what
    OpenAI clients concatenate).
    """
    collection = body.model
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    gone = threading.Event()

    def put(kind: str, value: Any) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    def on_token(piece: str) -> None:
        if gone.is_set():  # the client hung up: stop generating for nobody
            raise ClientGone
        put("token", piece)

    def work() -> None:
        if gone.is_set():  # hung up while waiting in the queue
            return
        try:
            put("done", service.answer(app, question, history, retrieval, generation, on_token, gone))
        except ClientGone:
            pass
        except BaseException as exc:  # noqa: BLE001 - whatever failed is the stream's last event
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

    async def chunks() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            started = False
            streamed = ""
            while True:
                kind, value = await events.get()
                if kind == "token":
                    if not started:  # the answer is stripped; so is its stream
                        value = value.lstrip()
                        started = bool(value)
                    if value:
                        streamed += value
                        yield chunk({"content": value})
                elif kind == "done":
                    answer, standalone = value
                    conversation_id = service.record(
                        collection, key, body.conversation_id, question, standalone, answer
                    )
                    if answer.answer != streamed and answer.answer.startswith(streamed):
                        yield chunk({"content": answer.answer[len(streamed) :]})
                    yield chunk(
                        {},
                        finish_reason(app, generation, answer),
                        usage=usage(answer),
                        **attribution(answer),
                        answer=answer.answer,
                        conversation_id=conversation_id,
                    )
                    break
                else:
                    status = status_of(value) if isinstance(value, RagappError) else 500
                    message = (
                        str(value) if isinstance(value, RagappError) else f"internal error: {type(value).__name__}"
                    )
                    yield f"data: {json.dumps(error_body(status, message))}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            gone.set()

    return chunks()


@router.get("/v1/models", response_model=s.ModelList)
def models(key: Key, service: ServiceDep) -> dict[str, Any]:
    """The collections this key can read, as OpenAI models: pass one as `model`."""
    return {"data": [{"id": n, "created": 0} for n in service.visible(key)]}
