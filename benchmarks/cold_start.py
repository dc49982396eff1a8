"""Cold start: a whole `ragapp search` process against the textbook LangChain script doing the same search.

    .venv/bin/python benchmarks/cold_start.py [--repeat 5] [--corpus docs]

What a CLI user waits for is the process, not the query: imports, opening the workspace, the query's embedding,
the search, printing. Both sides run as fresh processes over the same corpus (ragapp's own docs/ by default):

- `ragapp search QUERY`: ragapp's CLI on an ingested workspace (the ONNX query encoder already cached, as after
  the first search on a machine);
- the baseline: the textbook LangChain script, `HuggingFaceEmbeddings` over the same model, `FAISS.load_local`
  of a store holding the same chunks and vectors, `similarity_search`;
- `ragapp ingest CORPUS` when nothing changed, for reference (no baseline: LangChain has no incremental ingest).

Runs alternate between the systems; printed are the medians of wall and CPU seconds per process and the
baseline's median over ragapp's. One more figure, `ragapp search` with an empty cache folder, shows what the
first search on a machine pays once (the export and check of the query encoder).

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest import ensure_baseline_libs
from machine import cpu_name
from query import langchain_store

QUERY = "How do I rebuild the vector index after changing the embedding model?"

BASELINE = """
import sys
from langchain_community.vectorstores import FAISS
from langchain_huggingface import HuggingFaceEmbeddings
embeddings = HuggingFaceEmbeddings(model_name=sys.argv[2], encode_kwargs={"normalize_embeddings": True})
store = FAISS.load_local(sys.argv[1], embeddings, allow_dangerous_deserialization=True)  # the bench's own file
for doc in store.similarity_search(sys.argv[3], k=5):
    print(doc.page_content[:80].replace("\\n", " "))
"""


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one process run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def save_langchain_store(workspace: Path, target: Path) -> None:
    """A LangChain FAISS store with exactly the workspace's chunks and vectors, saved for the baseline."""
    from langchain_huggingface import HuggingFaceEmbeddings

    from ragapp.embedding import shipped_model_path

    langchain_store(workspace, HuggingFaceEmbeddings(model_name=str(shipped_model_path()))).save_local(str(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=ROOT / "docs")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ragapp-bench")
    args = parser.parse_args()
    libs = ensure_baseline_libs(args.cache)
    sys.path.insert(0, str(libs))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ragapp.embedding import shipped_model_path

    ragapp = [sys.executable, "-m", "ragapp"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(libs), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="ragapp-cold-") as scratch:
        workspace, lc_store = Path(scratch) / "workspace", Path(scratch) / "langchain-faiss"
        subprocess.run([*ragapp, "--workspace", str(workspace), "ingest", str(args.corpus)], env=env, check=True)
        save_langchain_store(workspace, lc_store)
        fresh_cache = Path(scratch) / "empty-cache"
        first = run(
            [*ragapp, "--workspace", str(workspace), "search", QUERY], {**env, "RAGAPP_CACHE_DIR": str(fresh_cache)}
        )
        shutil.rmtree(fresh_cache, ignore_errors=True)
        commands = {
            "LangChain script (baseline)": [
                sys.executable,
                "-c",
                BASELINE,
                str(lc_store),
                str(shipped_model_path()),
                QUERY,
            ],
            "ragapp search": [*ragapp, "--workspace", str(workspace), "search", QUERY],
            "ragapp ingest, nothing changed": [*ragapp, "--workspace", str(workspace), "ingest", str(args.corpus)],
        }
        run(commands["ragapp search"], env)  # the machine's cache holds the query encoder from here on
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for round_ in range(args.repeat):
            names = list(commands) if round_ % 2 == 0 else list(reversed(commands))
            for name in names:
                times[name].append(run(commands[name], env))
    print(f"\nCPU: {cpu_name()}; corpus {args.corpus}; median of {args.repeat} runs each\n")
    print(f"{'process':34} {'wall s':>7} {'CPU s':>7}  {'baseline wall / this':>20}")
    base = statistics.median(w for w, _ in times["LangChain script (baseline)"])
    for name, samples in times.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"{name:34} {wall:7.2f} {cpu:7.2f}  {base / wall:19.2f}x")
    print(f"{'ragapp search, empty cache (once)':34} {first[0]:7.2f} {first[1]:7.2f}")


if __name__ == "__main__":
    main()
