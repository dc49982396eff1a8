"""Request and response bodies of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragapp.answer import Citation
from ragapp.search import SearchHit

Mode = Literal["dense", "bm25", "hybrid"]
FilterValue = str | int | list[str | int]
Text = Annotated[str, Field(min_length=1, max_length=20_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Retrieval(_Strict):
    k: int | None = Field(None, ge=1, le=100, description="How many passages (default: retrieval.k).")
    mode: Mode | None = Field(None, description="dense, bm25 or hybrid (default: retrieval.mode).")
    filters: dict[str, FilterValue] | None = Field(
        None,
        description="Only passages from matching documents: source (glob), kind, document (id) or meta.NAME, e.g. "
        '{"kind": "pdf", "meta.team": ["infra", "ops"]}.',
    )
    rerank: bool | None = Field(
        None, description="Reorder the candidates with the reranker (default: on when retrieval.reranker is set)."
    )


class Sampling(_Strict):
    max_tokens: int | None = Field(None, ge=1, le=4096, description="Longest answer in tokens.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    repetition_penalty: float | None = Field(
        None, gt=0, le=2, description="Above 1 makes tokens already in the prompt or answer less likely; 1 = off."
    )
    no_repeat_ngram_size: int | None = Field(
        None, ge=0, le=64, description="Never repeat a run of this many answer tokens; 0 = off (transformers only)."
    )

    def generation(self) -> dict[str, Any]:
        values = {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        values["seed"] = self.seed
        values["repetition_penalty"] = self.repetition_penalty
        values["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return {k: v for k, v in values.items() if v is not None}


class SearchRequest(Retrieval):
    query: Text
    collection: str = "default"


class SearchResponse(BaseModel):
    query: str
    collection: str
    hits: list[SearchHit]
    timings: dict[str, float]


class QueryRequest(Retrieval, Sampling):
    question: Text
    collection: str = "default"
    conversation_id: str | None = Field(None, max_length=64, description="Continue this conversation.")


class Quote(BaseModel):
    """Where a sentence's support is, as offsets into a passage the response already carries (no copy)."""

    chunk_id: int = Field(description="The passage: the `chunk_id` of one of `citations`.")
    start: int = Field(description="First character of the supporting span in that citation's `text`.")
    end: int = Field(description="One past its last character: the quote is `text[start:end]`.")


class Sentence(BaseModel):
    """One sentence of the answer and the passages that support it, so a client can show each claim's source."""

    text: str = Field(description="The sentence, as in the answer.")
    citations: list[int] = Field(description="Numbers `n` of the citations that support it, best first; [] = none.")
    support: float = Field(description="How well its best passage supports it, 0..1.")
    quote: Quote | None = Field(description="The supporting span of its best passage; null when unsupported.")


ABSTAINED = (
    "True when nothing relevant was found or nothing in the draft was supported: `answer` then says it is not "
    "in the documents, and `citations` are the closest passages (none cited)."
)


class QueryResponse(BaseModel):
    answer: str
    question: str
    standalone_question: str = Field(description="The question as retrieved for (follow-ups are rewritten).")
    conversation_id: str
    collection: str
    model: str
    citations: list[Citation]
    chunks: list[SearchHit] = Field(
        description="Every retrieved passage, best first (citations are those in the prompt)."
    )
    sentences: list[Sentence] = Field(description="The answer sentence by sentence, with what supports each.")
    abstained: bool = Field(description=ABSTAINED)
    timings: dict[str, float]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones count
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """OpenAI's chat completion request; fields it has and ragapp does not use are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field("default", description="The collection to answer from.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    # ragapp's extras
    conversation_id: str | None = Field(None, max_length=64, description="ragapp: continue a stored conversation.")
    k: int | None = Field(None, ge=1, le=100, description="ragapp: how many passages.")
    mode: Mode | None = Field(None, description="ragapp: retrieval mode.")
    filters: dict[str, FilterValue] | None = Field(None, description="ragapp: retrieval filters (see /v1/search).")
    rerank: bool | None = Field(None, description="ragapp: rerank the candidates (see /v1/search).")

    def generation(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }
        if self.stop is not None:
            values["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return {k: v for k, v in values.items() if v is not None}


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[Citation] = Field(description="ragapp: the numbered passages the answer's [n] refer to.")
    sentences: list[Sentence] = Field(description="ragapp: the answer sentence by sentence, with what supports each.")
    abstained: bool = Field(description="ragapp: " + ABSTAINED)
    conversation_id: str = Field(description="ragapp: send it back to continue the conversation.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragapp"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CollectionRequest(_Strict):
    # The name is checked by the route (a 400 that says what is wrong with it); the pattern documents it.
    name: str = Field(
        max_length=1000,
        description="1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit.",
        json_schema_extra={"pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"},
    )


class CollectionInfo(BaseModel):
    name: str
    documents: int
    chunks: int


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class DocumentInfo(BaseModel):
    id: int
    source: str
    kind: str
    title: str | None
    size: int
    chunks: int
    metadata: dict[str, Any]
    updated_at: str


class DocumentList(BaseModel):
    collection: str
    documents: list[DocumentInfo]


class Job(BaseModel):
    id: str
    collection: str
    status: Literal["queued", "running", "completed", "failed"]
    files: list[str]
    report: dict[str, Any]
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class Removed(BaseModel):
    removed: int
    chunks_removed: int


class UploadInfo(BaseModel):
    name: str
    size: int
    status: Literal["ingested", "pending", "failed"] = Field(
        description="ingested (it is the document `document_id`), pending (a job is on it) or failed (see `reason`)."
    )
    document_id: int | None
    job_id: str | None = Field(description="The newest upload job that had this file.")
    reason: str | None = Field(description="Why it was not ingested, when it was not.")


class UploadList(BaseModel):
    collection: str
    uploads: list[UploadInfo]


class UploadRemoved(BaseModel):
    name: str
    removed: int = Field(description="Documents removed with the file (0 for a file that was never ingested).")
    chunks_removed: int


class ConversationTurn(BaseModel):
    question: str
    standalone_question: str
    answer: str
    citations: list[dict[str, Any]]
    sentences: list[Sentence] = Field(
        description="The answer's sentences as `/v1/query` gave them ([] for turns stored before attribution)."
    )
    abstained: bool = Field(description=ABSTAINED)
    created_at: str


class Conversation(BaseModel):
    id: str
    collection: str
    turns: list[ConversationTurn]


class Health(BaseModel):
    status: Literal["ok"]
    collections: int
    generation_queue: int


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int


class Error(BaseModel):
    error: ErrorBody
