"""Stored conversations: the turns a key asked in a collection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ragapp.service import schemas as s
from ragapp.service.collections import DEFAULT
from ragapp.service.dependencies import Key, ServiceDep
from ragapp.service.service import key_id

router = APIRouter(tags=["answers"])


@router.get("/v1/conversations/{conversation_id}", response_model=s.Conversation)
def conversation(conversation_id: str, key: Key, service: ServiceDep, collection: str = DEFAULT) -> dict[str, Any]:
    """The stored turns of a conversation (only the key that started it can read it)."""
    service.readable(key, collection)
    turns = service.conversations.turns(conversation_id, collection, key_id(key))
    return {"id": conversation_id, "collection": collection, "turns": turns}
