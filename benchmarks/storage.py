"""Ingest and query latency at 100k chunks: FAISS against pgvector (HNSW) in PostgreSQL, same vectors, same run.

    .venv/bin/python benchmarks/storage.py [--chunks N] [--repeat 3] [--pg-budget 480] [--ef-search 64,128,256,512]

Data: the 100k set of benchmarks/query.py (SciFact's chunks plus nine noisy copies of each, 113,660 chunks,
embedded once and cached in ~/.cache/ragapp-bench; built on the first run); `--chunks N` takes its first N
chunks by id. Queries: SciFact's 300 test queries, embedded once up front by ragapp's query encoder, so
the indexes are timed, not the model. PostgreSQL 16 with pgvector is a throw-away server from the
`pgserver` wheel, with its default settings, in a fresh temporary folder that is deleted at the end.

Ingest: the same documents and chunk rows are first bulk-inserted into each store (SQLite for FAISS,
PostgreSQL for pgvector; not timed), then the (id, vector) pairs go in the way ragapp's ingest adds them:
`index.add` in steps of 1,024 (ragapp.ingest.EMBED_BATCH) and, for FAISS, `save` at the end (the file
written atomically and the chunks marked indexed in SQL). pgvector's `add` writes the vectors into its
HNSW graph and marks the chunks in the same transaction; there is nothing to save. FAISS is timed three
ways: flat; `hnsw` (the graph grows step by step, as in every ingest into an existing 100k workspace);
`auto` (flat while adding, converted to HNSW by the one save: a fresh ingest that saves only at the end).
After the ingest PostgreSQL gets VACUUM ANALYZE (what autovacuum does soon after), not timed.

pgvector's graph inserts are slow (about 50-80 vectors/s here: all of 100k would take about 25 minutes),
so ragapp's path is timed for --pg-budget seconds (0: no limit); the rest of the vectors are then added
the same way but with the graph dropped, and CREATE INDEX (ragapp's own statement, with
maintenance_work_mem = --pg-build-memory) builds it over the full table, so that the searches see every
vector. The report gives both times, and what ragapp's path would take for all vectors at its last rate.

Queries (k = 10, straight on the workspace index objects, as ragapp's search calls them): FAISS flat,
FAISS HNSW (the `auto` index), pgvector HNSW (hnsw.ef_search = EF_SEARCH), pgvector exact scan; and with
a filter to a fixed random 10 % of the documents (ragapp's Restriction, a new one per query as ragapp's
search makes it: FAISS looks the allowed chunk ids up in SQLite, pgvector joins them in its statement;
one more FAISS row reuses one Restriction, to show the lookup's share). A last row times what every
pgvector search pays besides the search (a pooled connection, SET LOCAL, SELECT 1, rollback), and
EXPLAIN ANALYZE gives PostgreSQL's own planning and execution times for 50 queries.
Every system runs all queries once to warm up, then --repeat rounds, alternating the order; each round
gives a p50 and p99, the table shows the medians over rounds, and pgvector's p50 as a ratio to its FAISS
counterpart in the same round (median of those ratios).

Recall@10 of each approximate search against FAISS flat on the same vectors (filtered: against FAISS
flat with the same filter), the share of queries where pgvector's exact scan returns FAISS flat's top
10 (same ids in the same order, and as a set), and pgvector's recall and p50 at other hnsw.ef_search
values (--ef-search; set through ragapp.indexes.pgvector_index.EF_SEARCH for this process only).

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_name
from query import ensure_corpus, percentile

K = 10
FILTER_SHARE = 0.10
INSERT_BATCH = 5000  # rows per INSERT when filling a store (not timed)
GROWN = "FAISS HNSW grown step by step"


@dataclass
class Corpus:
    ids: np.ndarray  # chunk ids, ascending
    vectors: np.ndarray  # float32, one row per id
    documents: list[dict[str, Any]]  # DocumentRow columns
    chunks: list[dict[str, Any]]  # ChunkRow columns, indexed = False


@dataclass
class Built:
    name: str
    index: Any  # WorkspaceIndex or PgVectorWorkspaceIndex
    store: Any
    marks: list[tuple[int, float]]  # (vectors added, seconds since the first step) after each timed step
    seconds: float  # ragapp's ingest path for `vectors` vectors, FAISS's save included
    vectors: int
    save_seconds: float = 0.0
    bulk: tuple[int, float, float] | None = None  # pgvector past the budget: vectors, load s, CREATE INDEX s
    size_mib: float = 0.0  # on disk (MiB, like PostgreSQL's pg_size_pretty)
    cleanup: Callable[[], None] = lambda: None

    @property
    def rate(self) -> float:
        return self.vectors / self.seconds

    def seconds_at(self, count: int) -> float:
        """Seconds to the first step that reached `count` vectors (the save prorated)."""
        reached, seconds = next(((c, s) for c, s in self.marks if c >= count), self.marks[-1])
        return seconds + self.save_seconds * reached / self.marks[-1][0]


def test_queries(data: Path) -> list[str]:
    from ragapp.connectors.beir import BeirCollection
    from ragapp.evals.trec import read_qrels

    collection = BeirCollection.open(data)
    judged = read_qrels(collection.qrels_path("test"))
    queries = collection.queries()
    return [queries[q] for q in judged if q in queries]


def load_corpus(workspace: Path, limit: int | None, queries: list[str]) -> tuple[Corpus, np.ndarray, int, str, int]:
    """The first `limit` chunks of the cached workspace with their documents and vectors, the query vectors,
    and the embedder's dimension and fingerprint and the configured HNSW m."""
    from sqlalchemy import select

    from ragapp import App
    from ragapp.store import ChunkRow, DocumentRow

    with App(workspace, config={"index": {"kind": "flat"}}) as app:
        store = app.open_store()
        with store.session() as s:
            query = select(ChunkRow.__table__).order_by(ChunkRow.id)
            if limit:
                query = query.limit(limit)
            chunks = [{**row, "indexed": False} for row in s.execute(query).mappings()]
            wanted = {row["document_id"] for row in chunks}
            documents = [
                dict(row)
                for row in s.execute(select(DocumentRow.__table__).order_by(DocumentRow.id)).mappings()
                if row["id"] in wanted
            ]
        ids = np.asarray([row["id"] for row in chunks], dtype=np.int64)
        vectors = np.ascontiguousarray(app.indexes.vectors(store).index.vectors(ids), dtype=np.float32)
        query_vectors = np.ascontiguousarray(app.embedder.embed_queries(queries), dtype=np.float32)
        embedder = app.embedder
        return (
            Corpus(ids, vectors, documents, chunks),
            query_vectors,
            embedder.dim,
            embedder.fingerprint,
            app.config.index.hnsw_m,
        )


def fill(store: Any, corpus: Corpus) -> None:
    """The documents and chunk rows, with their ids, in one transaction (what an ingest writes before embedding)."""
    from sqlalchemy import insert

    from ragapp.store import ChunkRow, DocumentRow

    with store.session() as s:
        for table, rows in ((DocumentRow.__table__, corpus.documents), (ChunkRow.__table__, corpus.chunks)):
            for start in range(0, len(rows), INSERT_BATCH):
                s.execute(insert(table), rows[start : start + INSERT_BATCH])
        s.commit()


def steps(corpus: Corpus) -> list[tuple[list[int], np.ndarray]]:
    from ragapp.ingest import EMBED_BATCH

    return [
        (corpus.ids[start : start + EMBED_BATCH].tolist(), corpus.vectors[start : start + EMBED_BATCH])
        for start in range(0, len(corpus.ids), EMBED_BATCH)
    ]


def ingest_faiss(kind: str, corpus: Corpus, dim: int, fingerprint: str, hnsw_m: int) -> Built:
    from ragapp.store import Store
    from ragapp.vector_index import WorkspaceIndex

    folder = Path(tempfile.mkdtemp(prefix=f"ragapp-bench-faiss-{kind}-"))
    store = Store(f"sqlite:///{folder / 'ragapp.db'}")

    def cleanup() -> None:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)

    try:
        fill(store, corpus)
        index = WorkspaceIndex(folder / "index.faiss", store, dim, fingerprint, kind, hnsw_m)  # type: ignore[arg-type]
        index.reconcile()
        marks, count = [], 0
        started = time.perf_counter()
        for ids, vectors in tqdm(steps(corpus), desc=f"ingest FAISS {kind}", unit="step", leave=False, mininterval=1):
            index.add(ids, vectors)
            count += len(ids)
            marks.append((count, time.perf_counter() - started))
        index.save()
        seconds = time.perf_counter() - started
        if store.counts()["pending"]:
            raise SystemExit(f"FAISS {kind}: chunks left unindexed after the ingest")
    except BaseException:
        cleanup()
        raise

    name = {"auto": f"FAISS auto ({index.kind} at save)", "hnsw": GROWN, "flat": "FAISS flat"}[kind]
    size = (folder / "index.faiss").stat().st_size / 2**20
    return Built(name, index, store, marks, seconds, count, seconds - marks[-1][1], None, size, cleanup)


def autocommit(store: Any, *statements: str) -> list[Any]:
    from sqlalchemy import text

    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        results = [connection.execute(text(sql)) for sql in statements]
        return [result.scalar() if result.returns_rows else None for result in results]


def ingest_pgvector(
    server: Any, corpus: Corpus, dim: int, fingerprint: str, hnsw_m: int, budget: float, work_mem: str
) -> Built:
    """ragapp's ingest path until `budget` seconds have passed (0: no limit); the rest, if any, is loaded
    without the graph, which CREATE INDEX then builds (not ragapp's path: so that the searches see every vector)."""
    from ragapp.indexes.pgvector_index import TABLE
    from sqlalchemy import text

    from ragapp.store import Store
    from ragapp.vector_index import PgVectorWorkspaceIndex

    server.psql("CREATE DATABASE bench;")
    store = Store(server.get_uri("bench"))
    fill(store, corpus)
    autocommit(store, "VACUUM ANALYZE")
    index = PgVectorWorkspaceIndex(store, dim, fingerprint, hnsw_m)
    index.reconcile()  # creates the extension, the table and its (empty) HNSW graph
    work = steps(corpus)
    marks, count = [], 0
    bar = tqdm(total=len(corpus.ids), desc="ingest pgvector", unit="vector", leave=False, mininterval=1)
    started = time.perf_counter()
    for ids, vectors in work:
        if budget and time.perf_counter() - started > budget:
            break
        index.add(ids, vectors)
        count += len(ids)
        marks.append((count, time.perf_counter() - started))
        bar.update(len(ids))
    bar.close()
    bulk = None
    if count < len(corpus.ids):
        print(
            f"  pgvector: {count:,} vectors through ragapp's ingest path in {marks[-1][1]:.0f} s (--pg-budget); "
            f"loading the other {len(corpus.ids) - count:,} without the graph, then CREATE INDEX ...",
            flush=True,
        )
        loading = time.perf_counter()
        autocommit(store, f"DROP INDEX {TABLE}_hnsw")
        for ids, vectors in tqdm(work[len(marks) :], desc="load pgvector", unit="step", leave=False, mininterval=1):
            index.add(ids, vectors)
        loaded = time.perf_counter() - loading
        building = time.perf_counter()
        with store.engine.begin() as connection:
            connection.execute(text(f"SET LOCAL maintenance_work_mem = '{work_mem}'"))
            index.index.create(connection)  # the same CREATE INDEX as ragapp's, now over a full table
        bulk = (len(corpus.ids) - count, loaded, time.perf_counter() - building)
    if store.counts()["pending"] or index.count() != len(corpus.ids):
        raise SystemExit("pgvector: chunks left unindexed after the ingest")
    autocommit(store, "VACUUM ANALYZE")
    (size,) = autocommit(store, "SELECT pg_total_relation_size('chunk_vectors')")

    def cleanup() -> None:
        store.close()

    return Built("pgvector HNSW", index, store, marks, marks[-1][1], count, 0.0, bulk, size / 2**20, cleanup)


# -- queries ------------------------------------------------------------------------------------------


def run(
    fn: Callable[[np.ndarray], list[tuple[int, float]]], queries: np.ndarray
) -> tuple[list[float], list[list[int]]]:
    """Milliseconds per query and the returned ids, each query timed alone."""
    times, found = [], []
    for n in range(len(queries)):
        vector = queries[n : n + 1]
        started = time.perf_counter()
        hits = fn(vector)
        times.append((time.perf_counter() - started) * 1000)
        found.append([chunk_id for chunk_id, _ in hits])
    return times, found


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(found, exact, strict=True)]))


def same_lists(found: list[list[int]], exact: list[list[int]]) -> tuple[float, float]:
    """Share of queries with the identical top-k list (ids and order), and with the same set of ids."""
    pairs = list(zip(found, exact, strict=True))
    return float(np.mean([a == b for a, b in pairs])), float(np.mean([set(a) == set(b) for a, b in pairs]))


def floor(store: Any) -> list[tuple[int, float]]:
    """What every pgvector search pays besides the search: a pooled connection, SET LOCAL, a statement, rollback."""
    from sqlalchemy import text

    with store.engine.connect() as connection:
        connection.execute(text("SET LOCAL hnsw.ef_search = 256"))
        connection.execute(text("SELECT 1")).all()
        connection.rollback()
    return []


def server_ms(store: Any, vectors: np.ndarray, exact: bool, ef_search: int) -> tuple[float, float]:
    """Median planning and execution milliseconds PostgreSQL reports (EXPLAIN ANALYZE) for unfiltered searches."""
    from sqlalchemy import text

    planning, execution = [], []
    for vector in vectors:
        literal = "[" + ",".join(f"{x:.9g}" for x in vector) + "]"
        with store.engine.connect() as connection:
            setting = "enable_indexscan = off" if exact else f"hnsw.ef_search = {ef_search}"
            connection.execute(text(f"SET LOCAL {setting}"))
            (plan,) = connection.execute(
                text(
                    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT chunk_id, embedding <#> CAST(:q AS vector) AS distance "
                    f"FROM chunk_vectors ORDER BY distance LIMIT {K}"
                ),
                {"q": literal},
            ).scalar()
            connection.rollback()
        planning.append(plan["Planning Time"])
        execution.append(plan["Execution Time"])
    return statistics.median(planning), statistics.median(execution)


def pg_info(store: Any) -> dict[str, str]:
    keys = ("server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_workers_per_gather")
    values = autocommit(
        store,
        *(f"SHOW {key}" for key in keys),
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
        "SELECT pg_size_pretty(pg_relation_size('chunk_vectors_hnsw'))",
        "SELECT pg_size_pretty(pg_relation_size('chunk_vectors'))",
    )
    return dict(zip((*keys, "pgvector", "HNSW graph", "vector table"), map(str, values), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "beir" / "scifact")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ragapp-bench")
    parser.add_argument("--chunks", type=int, default=0, help="use the first N chunks of the 100k set (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="timed query rounds (default 3)")
    parser.add_argument(
        "--pg-budget",
        type=float,
        default=480,
        help="seconds of pgvector ingest through ragapp's path before the rest is bulk-loaded (0: no limit; default 480)",
    )
    parser.add_argument("--pg-build-memory", default="2GB", help="maintenance_work_mem for that CREATE INDEX")
    parser.add_argument("--ef-search", default="64,128,256,512", help="pgvector hnsw.ef_search values to sweep")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").exists():
        raise SystemExit(f"{args.data}: no SciFact corpus.jsonl (pass --data)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wall = time.perf_counter()

    import pgserver
    from ragapp.indexes import pgvector_index

    from ragapp.vector_index import Restriction

    _, large = ensure_corpus(args.data, args.cache)
    queries = test_queries(args.data)
    print(f"loading the corpus and embedding {len(queries)} SciFact test queries ...", flush=True)
    corpus, query_vectors, dim, fingerprint, hnsw_m = load_corpus(large, args.chunks or None, queries)
    n = len(corpus.ids)
    print(f"{n:,} chunks in {len(corpus.documents):,} documents, dimension {dim}, HNSW m = {hnsw_m}", flush=True)

    pgdata = tempfile.mkdtemp(prefix="ragapp-bench-pg-")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    cleanups: list[Callable[[], None]] = []
    try:
        # -- ingest --------------------------------------------------------------------------------
        built: dict[str, Built] = {}
        for kind in ("flat", "hnsw", "auto"):
            result = ingest_faiss(kind, corpus, dim, fingerprint, hnsw_m)
            cleanups.append(result.cleanup)
            built[result.name] = result
            print(f"  ingest {result.name}: {result.seconds:.1f} s", flush=True)
        pg = ingest_pgvector(server, corpus, dim, fingerprint, hnsw_m, args.pg_budget, args.pg_build_memory)
        cleanups.append(pg.cleanup)
        built[pg.name] = pg
        print(f"  ingest {pg.name}: {pg.vectors:,} vectors in {pg.seconds:.1f} s", flush=True)
        flat, incremental = built["FAISS flat"], built[GROWN]
        graph = next(b for name, b in built.items() if name.startswith("FAISS auto"))
        info = pg_info(pg.store)

        # -- queries -------------------------------------------------------------------------------
        rng = np.random.default_rng(0)
        doc_ids = np.asarray([d["id"] for d in corpus.documents], dtype=np.int64)
        allowed_docs = sorted(rng.choice(doc_ids, size=max(1, round(FILTER_SHARE * len(doc_ids))), replace=False))
        allowed_docs = [int(d) for d in allowed_docs]
        allowed_set = set(allowed_docs)
        allowed_chunks = sum(1 for c in corpus.chunks if c["document_id"] in allowed_set)
        cached = Restriction(graph.store, allowed_docs)
        cached.chunk_ids()

        def restricted(built: Built) -> Callable[[np.ndarray], Any]:
            return lambda v: built.index.search(v, K, Restriction(built.store, allowed_docs))

        searchers: dict[str, Callable[[np.ndarray], Any]] = {
            "FAISS flat": lambda v: flat.index.search(v, K),
            "FAISS HNSW": lambda v: graph.index.search(v, K),
            "pgvector HNSW": lambda v: pg.index.search(v, K),
            "pgvector exact": lambda v: pg.index.index.search(v, K, exact=True),
            "FAISS flat, filter": restricted(flat),
            "FAISS HNSW, filter": restricted(graph),
            "FAISS HNSW, filter, ids cached": lambda v: graph.index.search(v, K, cached),
            "pgvector HNSW, filter": restricted(pg),
            "pgvector exact, filter": lambda v: pg.index.index.search(v, K, allowed_docs, exact=True),
            "PostgreSQL round trip floor": lambda v: floor(pg.store),
        }
        counterpart = {
            "pgvector HNSW": "FAISS HNSW",
            "pgvector exact": "FAISS flat",
            "pgvector HNSW, filter": "FAISS HNSW, filter",
            "pgvector exact, filter": "FAISS flat, filter",
        }
        found: dict[str, list[list[int]]] = {}
        for name, fn in tqdm(searchers.items(), desc="warm-up", unit="system", leave=False):
            found[name] = run(fn, query_vectors)[1]
        found[GROWN] = run(lambda v: incremental.index.search(v, K), query_vectors)[1]
        found[f"{GROWN}, filter"] = run(restricted(incremental), query_vectors)[1]

        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in searchers}
        bar = tqdm(total=args.repeat * len(searchers), desc="timed rounds", unit="system", leave=False)
        for rnd in range(args.repeat):
            for name in list(searchers) if rnd % 2 == 0 else list(reversed(searchers)):
                times, _ = run(searchers[name], query_vectors)
                rounds[name].append((percentile(times, 50), percentile(times, 99)))
                bar.update()
        bar.close()

        inside = {
            "pgvector HNSW": server_ms(pg.store, query_vectors[:50], False, pgvector_index.EF_SEARCH),
            "pgvector exact": server_ms(pg.store, query_vectors[:50], True, pgvector_index.EF_SEARCH),
        }

        sweep = []
        default_ef = pgvector_index.EF_SEARCH
        fallbacks = [0]
        plain_run = pg.index.index._run

        def counting_run(query: Any, k: int, exact: bool) -> Any:
            fallbacks[0] += exact
            return plain_run(query, k, exact)

        pg.index.index._run = counting_run
        try:
            for ef in tqdm([int(x) for x in args.ef_search.split(",") if x], desc="ef_search sweep", leave=False):
                pgvector_index.EF_SEARCH = ef
                run(searchers["pgvector HNSW"], query_vectors[:50])  # warm
                times, hits = run(searchers["pgvector HNSW"], query_vectors)
                fallbacks[0] = 0
                ftimes, fhits = run(searchers["pgvector HNSW, filter"], query_vectors)
                sweep.append(
                    (
                        ef,
                        recall(hits, found["FAISS flat"]),
                        percentile(times, 50),
                        recall(fhits, found["FAISS flat, filter"]),
                        percentile(ftimes, 50),
                        fallbacks[0],
                    )
                )
        finally:
            pgvector_index.EF_SEARCH = default_ef
            pg.index.index._run = plain_run
    finally:
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the result or the error
                print(f"cleanup: {exc}", file=sys.stderr)
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)

    # -- the report -----------------------------------------------------------------------------------
    load = os.getloadavg()
    print(
        f"\n{date.today()}: {n:,} chunks, {len(queries)} SciFact test queries, k = {K}, CPU: {cpu_name()} "
        f"(load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}); total run {time.perf_counter() - wall:.0f} s"
    )
    print(
        f"PostgreSQL {info['server_version']}, pgvector {info['pgvector']} (pgserver defaults: shared_buffers "
        f"{info['shared_buffers']}, work_mem {info['work_mem']}, max_parallel_workers_per_gather "
        f"{info['max_parallel_workers_per_gather']}); vector table {info['vector table']}, "
        f"HNSW graph {info['HNSW graph']}; m = {hnsw_m}, ef_construction = {pgvector_index.EF_CONSTRUCTION}, "
        f"hnsw.ef_search = {pgvector_index.EF_SEARCH}"
    )

    print(f"\ningest: {n:,} (id, vector) pairs offered in steps of 1,024 (one ingest each)")
    print("| index | vectors | seconds | vectors/s | on disk MiB | vectors/s / pgvector's |\n|---|---|---|---|---|---|")
    for b in built.values():
        print(
            f"| {b.name} | {b.vectors:,} | {b.seconds:.1f} | {b.rate:,.0f} | {b.size_mib:.0f} | {b.rate / pg.rate:.1f} |"
        )
    tenth = max(1, len(pg.marks) // 10)
    last_rate = pg.rate
    if len(pg.marks) > tenth:
        first = pg.marks[tenth - 1]
        before = pg.marks[-tenth - 1]
        last_rate = (pg.marks[-1][0] - before[0]) / (pg.marks[-1][1] - before[1])
        print(
            f"pgvector, first tenth of its steps {first[0] / first[1]:,.0f} vectors/s, last tenth "
            f"{last_rate:,.0f} vectors/s"
        )
    same = incremental.seconds_at(pg.vectors)
    print(
        f"at the same {pg.vectors:,} vectors: FAISS HNSW {same:.1f} s, pgvector {pg.seconds:.1f} s "
        f"({pg.seconds / same:.0f}x as long)"
    )
    if pg.bulk:
        rest, loaded, created = pg.bulk
        print(
            f"pgvector past --pg-budget: the other {rest:,} vectors loaded without the graph in {loaded:.0f} s, "
            f"then CREATE INDEX over all {n:,} in {created:.0f} s (maintenance_work_mem {args.pg_build_memory}); "
            f"ragapp's path for all {n:,} would take about {pg.seconds + rest / last_rate:.0f} s "
            f"(the rest at the last tenth's rate)"
        )

    print(f"\nsearch: k = {K}, medians of {args.repeat} rounds (each {len(queries)} queries, one at a time, warm)")
    print(
        f"filter: {len(allowed_docs):,} of {len(doc_ids):,} documents ({allowed_chunks:,} chunks, "
        f"{allowed_chunks / n:.1%}); recall@10 against FAISS flat with the same filter"
    )
    print("| search | p50 ms | p99 ms | recall@10 | p50 / FAISS counterpart |\n|---|---|---|---|---|")
    exact_of = {name: "FAISS flat, filter" if "filter" in name else "FAISS flat" for name in found}
    for name, values in rounds.items():
        p50 = statistics.median(v[0] for v in values)
        p99 = statistics.median(v[1] for v in values)
        ratio = ""
        if name in counterpart:
            per_round = [a[0] / b[0] for a, b in zip(values, rounds[counterpart[name]], strict=True)]
            ratio = f"{statistics.median(per_round):.2f} (vs {counterpart[name]})"
        quality = f"{recall(found[name], found[exact_of[name]]):.4f}" if found[name][0] else "-"
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {quality} | {ratio} |")

    print("\ninside PostgreSQL (EXPLAIN ANALYZE, medians of 50 queries, unfiltered):")
    for name, (planning, execution) in inside.items():
        print(f"  {name:42} planning {planning:.2f} ms, execution {execution:.2f} ms")

    print("\nrecall@10 against FAISS flat (exact), same vectors:")
    for name in (
        "FAISS HNSW",
        GROWN,
        "pgvector HNSW",
        "FAISS HNSW, filter",
        f"{GROWN}, filter",
        "pgvector HNSW, filter",
    ):
        print(f"  {name:42} {recall(found[name], found[exact_of[name]]):.4f}")
    for name in ("pgvector exact", "pgvector exact, filter"):
        ordered, as_set = same_lists(found[name], found[exact_of[name]])
        print(
            f"  {name:42} same top-10 as {exact_of[name]}: {ordered:.1%} of queries (ids and order), "
            f"{as_set:.1%} (as sets); recall {recall(found[name], found[exact_of[name]]):.4f}"
        )

    print("\npgvector hnsw.ef_search sweep (one warm pass each; filtered: how many queries fell back to an exact scan)")
    print("| ef_search | recall@10 | p50 ms | filtered recall@10 | filtered p50 ms | exact fallbacks |")
    print("|---|---|---|---|---|---|")
    for ef, r, p50, fr, fp50, fb in sweep:
        print(f"| {ef} | {r:.4f} | {p50:.2f} | {fr:.4f} | {fp50:.2f} | {fb} / {len(queries)} |")


if __name__ == "__main__":
    main()
