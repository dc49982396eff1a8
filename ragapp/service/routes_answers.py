"""Retrieval and answers in ragapp's own shape: `/v1/search` (passages, no generation) and `/v1/query`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from ragapp.answer import Answer
from ragapp.service import schemas as s
from ragapp.service.dependencies import Key, ServiceDep
from ragapp.service.http_errors import error_responses

router = APIRouter(tags=["answers"])


@router.post("/v1/search", response_model=s.SearchResponse)
def search(body: s.SearchRequest, key: Key, service: ServiceDep) -> dict[str, Any]:
    """The passages most relevant to `query`, best first; no generation."""
    app = service.readable(key, body.collection)
    mark = time.perf_counter()
    hits = app.search(body.query, body.k, mode=body.mode, filters=body.filters, rerank=body.rerank)
    took = time.perf_counter() - mark
    return {
        "query": body.query,
        "collection": body.collection,
        "hits": [h.to_dict() for h in hits],
        "timings": {"search_s": round(took, 4)},
    }


@router.post("/v1/query", response_model=s.QueryResponse, responses=error_responses(502))
async def query(body: s.QueryRequest, key: Key, request: Request, service: ServiceDep) -> dict[str, Any]:
    """Answer a question with numbered citations and, per sentence, the passages and quote that support it
    (`abstained` when the documents do not have the answer); pass `conversation_id` back for a follow-up."""
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
