"""Load on `ragapp serve`: concurrent retrieval clients and a generation burst, against in-process search.

A real `ragapp serve` subprocess (real models) on 127.0.0.1 over ragapp's own docs (or --corpus):

* retrieval: for each concurrency level N (default 1, 10, 50), N asyncio clients with one connection
  each POST /v1/search with 20 fixed questions; throughput, p50/p90/p99 latency and errors (any status
  but 200, a bad body or a transport error) per level, medians over --repeats runs.
* baseline: the same questions, same k, through `ragapp.App(workspace).search` in this process,
  sequentially, after a warm-up, while the server is idle; every level's HTTP throughput is printed as a
  ratio to it, so the cost of HTTP + the server is visible.
* generation: a burst of --gen-clients non-streaming /v1/chat/completions, more than server.queue_size:
  accepted (200) ones are queued and answered, the rest get 503 with Retry-After and a JSON error; each
  503'd client retries once after Retry-After (capped by --max-retry-wait).

    .venv/bin/python benchmarks/server_load.py [--levels 1,10,50] [--repeats 3] [--json OUT]

Not a test: the goals (50 retrieval clients with zero errors; generation queued, full queue = 503 +
Retry-After) are printed as PASS/FAIL, and the exit status is 1 when one fails. The client runs on the
same machine as the server, so on a small machine they share the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx

from tests.servers import Server, ragapp, serving

# Fixed, varied questions about ragapp's docs (from the headings of docs/*.md).
QUESTIONS = [
    "How do I search passages with ragapp search?",
    "What does the search score mean?",
    "How many passages does ragapp ask use?",
    "How are passages fitted into the context window?",
    "What does the cited flag of a citation mean?",
    "How do temperature and greedy decoding differ?",
    "What are stop strings for?",
    "Where does configuration come from, and which source wins?",
    "How are environment variable values parsed?",
    "Which files does ragapp skip during ingest and why?",
    "How do I choose files with --include and --exclude?",
    "How are documents split into chunks?",
    "What happens if ingest is interrupted?",
    "How does hybrid fusion of BM25 and dense search work?",
    "What is the dataset format for ragapp eval run?",
    "How do I fail CI when answer quality drops?",
    "How do I serve the model with ragapp model serve?",
    "How do I apply a LoRA adapter to the generator?",
    "Why does the first ragapp ask take about 30 seconds longer?",
    "How do I back up or copy a workspace?",
]
LEVEL_GOAL = 50  # retrieval clients that must see zero errors


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


@dataclass
class Run:
    """One measured run: per-request latencies (s) of the good requests, and the errors."""

    name: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)  # the server's own timings.search_s
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)  # a few error details
    stopped_early: bool = False

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail[:300]}")

    def merge(self, other: Run) -> Run:
        """Both runs as one: their requests, errors and time added up."""
        out = Run(self.name, self.clients, self.seconds + other.seconds, self.latencies + other.latencies,
                  self.server_s + other.server_s, dict(self.errors), (self.samples + other.samples)[:5],
                  self.stopped_early or other.stopped_early)  # fmt: skip
        for kind, n in other.errors.items():
            out.errors[kind] = out.errors.get(kind, 0) + n
        return out

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        return {
            "name": self.name,
            "clients": self.clients,
            "requests": self.requests,
            "ok": len(self.latencies),
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "error_samples": self.samples,
            "seconds": self.seconds,
            "rps": self.requests / self.seconds if self.seconds else math.nan,
            "p50_ms": pct(ms, 50),
            "p90_ms": pct(ms, 90),
            "p99_ms": pct(ms, 99),
            "server_search_p50_ms": pct([x * 1000 for x in self.server_s], 50),
            "stopped_early": self.stopped_early,
        }


# -- workspace ------------------------------------------------------------------------------------


def prepare(workspace: Path, corpus: Path, args: argparse.Namespace) -> None:
    config = workspace / "ragapp.toml"
    ours = f"[generation]\nmax_new_tokens = {args.max_new_tokens}\n\n[server]\nqueue_size = {args.queue_size}\n"
    if not config.exists():
        workspace.mkdir(parents=True, exist_ok=True)
        config.write_text(ours, encoding="utf-8")
    else:  # a reused workspace keeps its file; the environment (which wins over it) sets ours for the server
        print(f"keeping {config}; generation.max_new_tokens and server.queue_size set through the environment")
    if (workspace / "ragapp.db").exists() and not args.reingest:
        print(f"reusing the ingested workspace {workspace}")
        return
    print(f"ingesting {corpus} into {workspace} ...", flush=True)
    mark = time.perf_counter()
    done = ragapp(workspace, "ingest", str(corpus), timeout=900)
    if done.returncode not in (0,):
        raise SystemExit(f"ragapp ingest failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"  ingested in {time.perf_counter() - mark:.1f} s: {last}")


def chunk_count(workspace: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{workspace / 'ragapp.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


# -- retrieval --------------------------------------------------------------------------------------


async def all_at_once(
    url: str,
    clients: int,
    timeout: float,
    on_error: Callable[[str, str], None],
    work: Callable[[int, httpx.AsyncClient], Awaitable[None]],
) -> float:
    """Run `work(i, http)` for `clients` clients, each with one connection opened before the clock starts
    (the runs measure requests, not TCP handshakes), all released at once; returns the seconds taken."""
    ready, connected = asyncio.Event(), asyncio.Event()
    count = [0]

    async def client(i: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
            try:
                await http.get("/healthz")
            except httpx.HTTPError as exc:
                on_error("connect", repr(exc))
            count[0] += 1
            if count[0] == clients:
                connected.set()
            await ready.wait()
            await work(i, http)

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await connected.wait()
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def search_level(url: str, clients: int, per_client: int, k: int, time_limit: float, timeout: float) -> Run:
    run = Run(f"http c={clients}", clients)
    deadline = time.perf_counter() + time_limit

    async def client(i: int, http: httpx.AsyncClient) -> None:
        for j in range(per_client):
            if time.perf_counter() > deadline:
                run.stopped_early = True
                return
            q = QUESTIONS[(i * 7 + j) % len(QUESTIONS)]
            mark = time.perf_counter()
            try:
                response = await http.post("/v1/search", json={"query": q, "k": k})
            except httpx.HTTPError as exc:
                run.error(f"transport {type(exc).__name__}", repr(exc))
                continue
            took = time.perf_counter() - mark
            if response.status_code != 200:
                run.error(f"HTTP {response.status_code}", response.text)
                continue
            try:
                body = response.json()
                hits = body["hits"]
                if not isinstance(hits, list) or not hits or len(hits) > k:
                    raise ValueError(f"{len(hits)} hits")
            except (ValueError, KeyError, TypeError) as exc:
                run.error("bad body", f"{exc}: {response.text}")
                continue
            run.latencies.append(took)
            run.server_s.append(float(body.get("timings", {}).get("search_s", math.nan)))

    run.seconds = await all_at_once(url, clients, timeout, run.error, client)
    return run


def baseline(app: Any, requests: int, k: int, warmup: int, time_limit: float) -> Run:
    run = Run("in-process App.search", 1)
    for q in QUESTIONS[:warmup]:
        app.search(q, k)
    started = time.perf_counter()
    for j in range(requests):
        if time.perf_counter() - started > time_limit:
            run.stopped_early = True
            break
        q = QUESTIONS[j % len(QUESTIONS)]
        mark = time.perf_counter()
        try:
            hits = app.search(q, k)
            if not hits:
                raise ValueError("no hits")
        except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop on them
            run.error(type(exc).__name__, str(exc))
            continue
        run.latencies.append(time.perf_counter() - mark)
    run.seconds = time.perf_counter() - started
    return run


# -- generation -----------------------------------------------------------------------------------


@dataclass
class Burst:
    clients: int
    queue_size: int
    seconds: float = 0.0
    ok_first: int = 0
    rejected_first: int = 0
    ok_retry: int = 0
    rejected_retry: int = 0
    latencies: list[float] = field(default_factory=list)  # accepted requests, first try and retries
    retry_after: list[int] = field(default_factory=list)
    bad_503: list[str] = field(default_factory=list)  # a 503 without a positive Retry-After or a JSON error
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    waited_s: list[float] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail[:300]}")

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        ok = self.ok_first + self.ok_retry
        return {
            "clients": self.clients,
            "queue_size": self.queue_size,
            "seconds": self.seconds,
            "ok_first": self.ok_first,
            "rejected_first": self.rejected_first,
            "ok_retry": self.ok_retry,
            "rejected_retry": self.rejected_retry,
            "other_errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "error_samples": self.samples,
            "bad_503": self.bad_503,
            "retry_after": self.retry_after,
            "p50_ms": pct(ms, 50),
            "p99_ms": pct(ms, 99),
            "answers_per_s": ok / self.seconds if self.seconds else math.nan,
            "completion_tokens": self.completion_tokens,
        }


def check_503(response: httpx.Response) -> tuple[int | None, str | None]:
    """(Retry-After seconds, problem or None) of a 503."""
    raw = response.headers.get("retry-after")
    problems = []
    seconds = None
    if raw is None:
        problems.append("no Retry-After header")
    elif not raw.strip().isdigit() or int(raw) <= 0:
        problems.append(f"Retry-After {raw!r} is not a positive integer")
    else:
        seconds = int(raw)
    try:
        err = response.json()["error"]
        if not isinstance(err.get("message"), str) or err.get("code") != 503:
            problems.append(f"unexpected error body {err!r}")
    except (ValueError, KeyError, TypeError, AttributeError):
        problems.append(f"not a JSON error body: {response.text[:200]!r}")
    return seconds, "; ".join(problems) or None


async def generation_burst(url: str, clients: int, queue_size: int, args: argparse.Namespace) -> Burst:
    burst = Burst(clients, queue_size)
    deadline = time.perf_counter() + args.gen_time_limit

    async def ask(http: httpx.AsyncClient, q: str) -> httpx.Response | None:
        body = {"model": "default", "messages": [{"role": "user", "content": q}], "k": args.k}
        try:
            return await http.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            burst.error(f"transport {type(exc).__name__}", repr(exc))
            return None

    def accepted(response: httpx.Response, took: float) -> bool:
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            burst.error("bad body", f"{exc}: {response.text}")
            return False
        burst.latencies.append(took)
        burst.completion_tokens.append(int(data.get("usage", {}).get("completion_tokens", -1)))
        return True

    async def timed(http: httpx.AsyncClient, q: str) -> tuple[httpx.Response | None, float]:
        mark = time.perf_counter()
        response = await ask(http, q)
        return response, time.perf_counter() - mark

    def refused(response: httpx.Response) -> int | None:
        """Record a 503 (and whether it is well formed); its Retry-After in seconds."""
        seconds, problem = check_503(response)
        if problem:
            burst.bad_503.append(problem)
        if seconds is not None:
            burst.retry_after.append(seconds)
        return seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        q = QUESTIONS[(i * 3) % len(QUESTIONS)]
        response, took = await timed(http, q)
        if response is None:
            return
        if response.status_code == 200:
            burst.ok_first += accepted(response, took)
            return
        if response.status_code != 503:
            burst.error(f"HTTP {response.status_code}", response.text)
            return
        burst.rejected_first += 1
        seconds = refused(response)
        wait = min(seconds or 1, args.max_retry_wait)
        if time.perf_counter() + wait > deadline:
            burst.error("no retry (time limit)", f"Retry-After {seconds}")
            return
        await asyncio.sleep(wait)
        response, took = await timed(http, q)
        if response is None:
            return
        if response.status_code == 200:
            burst.ok_retry += accepted(response, took)
        elif response.status_code == 503:
            burst.rejected_retry += 1
            refused(response)
        else:
            burst.error(f"HTTP {response.status_code} (retry)", response.text)

    burst.seconds = await all_at_once(url, clients, args.gen_timeout, burst.error, client)
    return burst


# -- the run --------------------------------------------------------------------------------------


def alive(server: Server, phase: str) -> None:
    if server.process.poll() is not None:
        raise SystemExit(f"ragapp serve exited ({server.process.returncode}) during {phase}; log {server.log}:\n"
                         f"{server.log.read_text(errors='replace')[-5000:]}")  # fmt: skip


def fmt(x: float, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="use (and keep) this workspace; ingested only if empty")
    parser.add_argument("--corpus", type=Path, default=ROOT / "docs", help="what to ingest (default: docs/)")
    parser.add_argument("--reingest", action="store_true", help="ingest --corpus even into a non-empty --workspace")
    parser.add_argument("--levels", default="1,10,50", help="concurrent retrieval clients, comma-separated")
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        help="search requests per level, split over its clients (at least --min-per-client each)",
    )
    parser.add_argument("--min-per-client", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every retrieval level (medians are printed)")
    parser.add_argument("--k", type=int, default=4, help="passages per search (HTTP and in-process)")
    parser.add_argument(
        "--level-time-limit",
        type=float,
        default=60,
        help="seconds; a level's clients (and the baseline) stop sending after",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds per search request")
    parser.add_argument("--queue-size", type=int, default=4, help="server.queue_size")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generation.max_new_tokens")
    parser.add_argument("--gen-clients", type=int, default=12, help="concurrent chat completions in the burst")
    parser.add_argument("--gen-repeats", type=int, default=1)
    parser.add_argument("--gen-timeout", type=float, default=300, help="seconds per chat completion")
    parser.add_argument("--gen-time-limit", type=float, default=240, help="seconds; no retry would end after")
    parser.add_argument("--max-retry-wait", type=float, default=60, help="cap on the wait before the one retry")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    load_before = load()
    print(f"load average before: {load_before} ({os.cpu_count()} CPUs)", flush=True)

    with ExitStack() as stack:
        if args.workspace:
            workspace = args.workspace.resolve()
        else:
            workspace = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ragapp-load-"))) / "ws"
        prepare(workspace, args.corpus.resolve(), args)
        chunks = chunk_count(workspace)
        env = {"RAGAPP_GENERATION_MAX_NEW_TOKENS": str(args.max_new_tokens),
               "RAGAPP_SERVER_QUEUE_SIZE": str(args.queue_size)}  # fmt: skip
        for name in [n for n in os.environ if n.startswith("RAGAPP_") and n not in ("RAGAPP_CACHE_DIR",)]:
            if name not in env:
                print(f"note: {name} is set and reaches the server")
        mark = time.perf_counter()
        log_copy = Path(tempfile.gettempdir()) / f"ragapp-server-load-{os.getpid()}.log"
        logs: list[Path] = []  # copied once the server has stopped, before a temporary workspace goes
        stack.callback(lambda: [shutil.copyfile(p, log_copy) for p in logs if p.exists()])
        server = stack.enter_context(serving(workspace, env=env, startup=300))
        logs.append(server.log)
        print(f"server {server.url} healthy after {time.perf_counter() - mark:.1f} s; log {server.log}", flush=True)

        # warm the server: the embedder and the indexes load on the first search
        with server.client(timeout=300) as http:
            mark = time.perf_counter()
            for q in QUESTIONS[:5]:
                r = http.post("/v1/search", json={"query": q, "k": args.k})
                if r.status_code != 200:
                    raise SystemExit(f"warm-up search failed: {r.status_code} {r.text}\nlog {server.log}")
            print(f"server warm-up (5 searches) {time.perf_counter() - mark:.1f} s", flush=True)

        from ragapp import App

        app = App(workspace)
        stack.callback(app.close)
        base_runs: list[Run] = []
        level_runs: dict[int, list[Run]] = {n: [] for n in levels}
        print(f"\n{chunks} chunks, k={args.k}, {len(QUESTIONS)} questions; {args.repeats} repeats", flush=True)
        for rep in range(args.repeats):
            # The baseline runs while the server is idle, half before and half after this repeat's HTTP levels,
            # so that a machine whose load drifts (other work on it) biases neither side.
            half = args.requests // 2
            first = baseline(app, half, args.k, 5 if rep == 0 else 2, args.level_time_limit / 2)
            for n in levels:
                per_client = max(args.min_per_client, math.ceil(args.requests / n))
                run = asyncio.run(search_level(server.url, n, per_client, args.k, args.level_time_limit, args.timeout))
                alive(server, f"retrieval c={n}")
                level_runs[n].append(run)
                s = run.summary()
                early = " (stopped at the time limit)" if run.stopped_early else ""
                print(f"  repeat {rep + 1}: {'http c=' + str(n):>12} {s['requests']:5d} req {s['rps']:7.1f} req/s "
                      f"p50 {fmt(s['p50_ms'])} p90 {fmt(s['p90_ms'])} p99 {fmt(s['p99_ms'])} ms, "
                      f"errors {s['errors']}{early}", flush=True)  # fmt: skip
                for sample in run.samples:
                    print(f"      {sample}")
            second = baseline(app, args.requests - half, args.k, 2, args.level_time_limit / 2)
            base = first.merge(second)
            base_runs.append(base)
            s = base.summary()
            print(f"  repeat {rep + 1}: {'in-process':>12} {s['requests']:5d} req {s['rps']:7.1f} req/s "
                  f"p50 {fmt(s['p50_ms'])} p90 {fmt(s['p90_ms'])} p99 {fmt(s['p99_ms'])} ms, errors {s['errors']}"
                  f"{' (stopped at the time limit)' if base.stopped_early else ''}", flush=True)  # fmt: skip

        bursts: list[Burst] = []
        if not args.skip_generation:
            with server.client(timeout=args.gen_timeout) as http:  # warm-up: the generator loads on first use
                mark = time.perf_counter()
                r = http.post("/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": QUESTIONS[0]}], "k": args.k})  # fmt: skip
                print(f"\ngeneration warm-up: HTTP {r.status_code} in {time.perf_counter() - mark:.1f} s", flush=True)
            for rep in range(args.gen_repeats):
                burst = asyncio.run(generation_burst(server.url, args.gen_clients, args.queue_size, args))
                alive(server, "generation burst")
                bursts.append(burst)
                g = burst.summary()
                print(
                    f"  burst {rep + 1}: {args.gen_clients} clients, {g['ok_first']} × 200, "
                    f"{g['rejected_first']} × 503 (Retry-After {sorted(set(burst.retry_after))}); retries: "
                    f"{g['ok_retry']} × 200, {g['rejected_retry']} × 503; other errors {g['other_errors']}; "
                    f"{g['seconds']:.1f} s",
                    flush=True,
                )
                for sample in burst.samples + burst.bad_503[:5]:
                    print(f"      {sample}")
            with server.client() as http:
                metrics = http.get("/metrics").text
            rejected = [line for line in metrics.splitlines() if line.startswith("ragapp_generation_rejected_total")]
            if rejected:
                print(f"  server metrics: {rejected[0]}")
        alive(server, "the run")
    # the server is stopped here (SIGTERM)
    log_text = log_copy.read_text(errors="replace") if log_copy.exists() else ""
    tracebacks = log_text.count("Traceback")
    exit_code = server.process.returncode

    # -- summary ------------------------------------------------------------------------------------
    b = [r.summary() for r in base_runs]
    base_rps = med([x["rps"] for x in b])
    print(f"\n== retrieval: /v1/search, k={args.k}, {chunks} chunks; median of {args.repeats} repeats ==")
    print(f"{'':24} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}"
          f" {'server p50':>10} {'× baseline':>10}")  # fmt: skip
    p50, p90, p99 = (fmt(med([x[f"{q}_ms"] for x in b])) for q in ("p50", "p90", "p99"))
    print(f"{'baseline in-process':24} {med([x['requests'] for x in b]):8.0f} {base_rps:8.1f} {p50:>8} {p90:>8} "
          f"{p99:>8} {sum(x['errors'] for x in b):7d} {'':>10} {1.0:10.2f}")  # fmt: skip
    table: dict[str, Any] = {}
    for n in levels:
        rs = [r.summary() for r in level_runs[n]]
        row = {
            "requests": med([x["requests"] for x in rs]),
            "rps": med([x["rps"] for x in rs]),
            "p50_ms": med([x["p50_ms"] for x in rs]),
            "p90_ms": med([x["p90_ms"] for x in rs]),
            "p99_ms": med([x["p99_ms"] for x in rs]),
            "errors_total": sum(x["errors"] for x in rs),
            "server_search_p50_ms": med([x["server_search_p50_ms"] for x in rs]),
        }
        row["ratio_to_baseline"] = row["rps"] / base_rps if base_rps else math.nan
        table[str(n)] = row
        print(f"{f'http, {n} clients':24} {row['requests']:8.0f} {row['rps']:8.1f} {fmt(row['p50_ms']):>8} "
              f"{fmt(row['p90_ms']):>8} {fmt(row['p99_ms']):>8} {row['errors_total']:7d} "
              f"{fmt(row['server_search_p50_ms']):>10} {row['ratio_to_baseline']:10.2f}")  # fmt: skip
    print("(errors: total over all repeats; server p50: the server's own timings.search_s; × baseline: req/s ratio)")

    goals: list[bool] = []
    top = max(levels)
    errors = table[str(top)]["errors_total"]
    ok = errors == 0 and top >= LEVEL_GOAL
    goals.append(ok)
    verdict = "PASS" if ok else ("FAIL" if errors else "NOT MEASURED")
    print(
        f"{verdict}: {top} concurrent retrieval clients, {errors} errors over "
        f"{sum(r.requests for r in level_runs[top])} requests (goal: {LEVEL_GOAL} clients, zero errors)"
    )

    gen: list[dict[str, Any]] = [x.summary() for x in bursts]
    if bursts:
        print(f"\n== generation: /v1/chat/completions (non-streaming), max_new_tokens={args.max_new_tokens}, "
              f"queue_size={args.queue_size}, {args.gen_clients} clients at once ==")  # fmt: skip
        print(f"{'burst':6} {'200':>4} {'503':>4} {'retry 200':>9} {'retry 503':>9} {'other':>6} {'Retry-After s':>14}"
              f" {'p50 ms':>8} {'p99 ms':>8} {'answers/s':>9} {'wall s':>7}")  # fmt: skip
        for i, g in enumerate(gen, 1):
            ra = f"{min(g['retry_after'])}-{max(g['retry_after'])}" if g["retry_after"] else "-"
            print(f"{i:<6} {g['ok_first']:4d} {g['rejected_first']:4d} {g['ok_retry']:9d} {g['rejected_retry']:9d} "
                  f"{g['other_errors']:6d} {ra:>14} {fmt(g['p50_ms'], '.0f'):>8} {fmt(g['p99_ms'], '.0f'):>8} "
                  f"{g['answers_per_s']:9.2f} {g['seconds']:7.1f}")  # fmt: skip
        print("(p50/p99: accepted requests, time to the full answer including the wait in the queue)")
        queued = all(g["ok_first"] >= min(args.queue_size, args.gen_clients) for g in gen)
        refused = all(g["rejected_first"] + g["ok_first"] == args.gen_clients for g in gen)
        well_formed = all(not g["bad_503"] for g in gen) and any(g["rejected_first"] for g in gen)
        clean = all(g["other_errors"] == 0 for g in gen)
        ok = queued and refused and well_formed and clean
        goals.append(ok)
        least = min(args.queue_size, args.gen_clients)
        print(
            f"{'PASS' if ok else 'FAIL'}: generation queued, not dropped (≥ {least} accepted per burst: "
            f"{'yes' if queued else 'no'}); the rest 503 with a positive Retry-After and a JSON error "
            f"({'yes' if well_formed else 'no'}); other errors 0 ({'yes' if clean else 'no'})"
        )

    load_after = load()
    busiest = max(float(x) for x in (load_before + " " + load_after).split() if x.replace(".", "").isdigit())
    if busiest > (os.cpu_count() or 1):
        print(
            f"\nnote: the load average reached {busiest:g} on {os.cpu_count()} CPUs: other work shared the machine, "
            "so the speeds are noisy (errors and status codes are not)"
        )
    print(f"\nserver exit status {exit_code}; tracebacks in its log: {tracebacks}; log copied to {log_copy}")
    print(f"load average before: {load_before}, after: {load_after}")
    if args.json:
        runs = {str(n): [r.summary() | {"latencies_ms": [x * 1000 for x in r.latencies]} for r in level_runs[n]]
                for n in levels}  # fmt: skip
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "chunks": chunks, "questions": QUESTIONS,
            "baseline": {"median_rps": base_rps, "runs": b}, "retrieval": table, "retrieval_runs": runs,
            "generation": gen, "server_exit": exit_code, "log_tracebacks": tracebacks,
            "load_before": load_before, "load_after": load_after,
        }, indent=1))  # fmt: skip
    return 0 if all(goals) else 1


if __name__ == "__main__":
    sys.exit(main())
