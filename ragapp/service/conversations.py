"""Conversations: turns stored in SQL, and follow-up questions rewritten to stand on their own.

Retrieval sees one question at a time, so "and how do I undo that?" finds nothing useful. Before a
follow-up is answered, the generator rewrites it with the recent turns into a standalone question,
which is what gets retrieved for and answered (both are stored with the turn).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from ragapp.answer import Answer
from ragapp.errors import NotFound
from ragapp.generators import GenerationConfig, Generator, Message
from ragapp.store import ConversationRow, Store, TurnRow

CONDENSE_SYSTEM = (
    "Rewrite the user's last question so that it can be understood without the conversation: "
    "replace pronouns and references with what they refer to. Reply with the rewritten question only."
)
CONDENSE = GenerationConfig(max_new_tokens=48, temperature=0.0, stop=["\n"])


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


def condense(generator: Generator, history: Sequence[Turn], question: str, window: int | None = None) -> str:
    """`question` rewritten to stand alone given `history` (oldest first); unchanged without history.

    The prompt fits `window` tokens (default: the generator's context window) with room for the rewrite:
    the newest turns that fit are kept, the older ones dropped (`fit_history`).
    """
    if not history:
        return question
    budget = (window or generator.context_window) - CONDENSE.max_new_tokens
    turns = fit_history(generator, history, question, budget)
    if not turns:  # not even a cut of the last turn fits beside the question: the question goes as asked
        return question
    rewritten = generator.generate(condense_messages(turns, question), CONDENSE).strip().strip('"').strip()
    # A small model may answer instead of rewriting, or write nothing: then the question goes as asked.
    return rewritten if rewritten and len(rewritten) <= 4 * len(question) + 200 else question


def condense_messages(history: Sequence[Turn], question: str) -> list[Message]:
    lines = []
    for turn in history:
        lines += [f"User: {turn.question}", f"Assistant: {turn.answer}"]
    prompt = "Conversation:\n" + "\n".join(lines) + f"\n\nLast question: {question}\nRewritten question:"
    return [{"role": "system", "content": CONDENSE_SYSTEM}, {"role": "user", "content": prompt}]


def fit_history(generator: Generator, history: Sequence[Turn], question: str, budget: int) -> list[Turn]:
    """The newest turns of `history` whose condense prompt fits `budget` tokens (counted with the
    generator's tokenizer). When the newest turn alone is too long, it is kept cut short (its start);
    an empty list when not even that leaves room."""

    def fits(turns: Sequence[Turn]) -> bool:
        return generator.count_tokens(condense_messages(turns, question)) <= budget

    if not fits([]):
        return []
    lo, hi = 0, len(history)  # binary search: the most newest turns that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(history[-mid:]):
            lo = mid
        else:
            hi = mid - 1
    if lo:
        return list(history[-lo:])
    last = history[-1]
    lo, hi = 0, max(len(last.question), len(last.answer))  # the longest cut of both texts that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits([_cut(last, mid)]):
            lo = mid
        else:
            hi = mid - 1
    return [_cut(last, lo)] if lo >= 40 else []  # a sliver of a turn is noise, not context


def _cut(turn: Turn, chars: int) -> Turn:
    def cut(text: str) -> str:
        return text if len(text) <= chars else text[:chars] + "…"

    return Turn(cut(turn.question), cut(turn.answer))


def history_from_messages(messages: Sequence[dict[str, str]]) -> list[Turn]:
    """Turns from an OpenAI-style message list (user/assistant pairs before the last user message)."""
    turns: list[Turn] = []
    pending: str | None = None
    for m in messages:
        if m["role"] == "user":
            pending = m["content"]
        elif m["role"] == "assistant" and pending is not None:
            turns.append(Turn(pending, m["content"]))
            pending = None
    return turns


class Conversations:
    def __init__(self, store: Store):
        self.store = store

    def start(self, collection: str, key_id: int | None) -> str:
        conversation_id = uuid.uuid4().hex
        with self.store.session() as s:
            s.add(ConversationRow(id=conversation_id, collection=collection, key_id=key_id))
            s.commit()
        return conversation_id

    def _row(self, s: Any, conversation_id: str, collection: str, key_id: int | None) -> ConversationRow:
        row = s.get(ConversationRow, conversation_id)
        # Someone else's conversation is reported exactly like a missing one.
        if row is None or row.collection != collection or row.key_id != key_id:
            raise NotFound(f"no conversation {conversation_id!r} in collection {collection!r}")
        return row

    def history(self, conversation_id: str, collection: str, key_id: int | None, last: int) -> list[Turn]:
        with self.store.session() as s:
            self._row(s, conversation_id, collection, key_id)
            rows = s.scalars(
                select(TurnRow)
                .where(TurnRow.conversation_id == conversation_id)
                .order_by(TurnRow.id.desc())
                .limit(last)
            ).all()
        return [Turn(r.question, r.answer) for r in reversed(rows)] if last else []

    def turns(self, conversation_id: str, collection: str, key_id: int | None) -> list[dict[str, Any]]:
        with self.store.session() as s:
            row = self._row(s, conversation_id, collection, key_id)
            return [
                {
                    "question": t.question,
                    "standalone_question": t.standalone,
                    "answer": t.answer,
                    "citations": t.citations,
                    "sentences": t.sentences or [],
                    "abstained": bool(t.abstained),
                    "created_at": t.created_at.isoformat(timespec="seconds"),
                }
                for t in row.turns
            ]

    def add(self, conversation_id: str, question: str, standalone: str, answer: Answer) -> None:
        with self.store.session() as s:
            s.add(
                TurnRow(
                    conversation_id=conversation_id,
                    question=question,
                    standalone=standalone,
                    answer=answer.answer,
                    citations=[vars(c) for c in answer.citations],
                    sentences=[x.to_dict() for x in answer.sentences],
                    abstained=answer.abstained,
                )
            )
            s.commit()

    def drop_collection(self, collection: str) -> None:
        with self.store.session() as s:
            ids = list(s.scalars(select(ConversationRow.id).where(ConversationRow.collection == collection)))
            s.execute(delete(TurnRow).where(TurnRow.conversation_id.in_(ids)))
            s.execute(delete(ConversationRow).where(ConversationRow.id.in_(ids)))
            s.commit()
