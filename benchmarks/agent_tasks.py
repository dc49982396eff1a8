"""Agent task success with the shipped SmolLM2-135M through the text protocol: tool choice by likelihood
against the tool names as the model wrote them (the baseline), in the same run.

    .venv/bin/python benchmarks/agent_tasks.py [--keep DIR]

Ten tasks with a checkable answer: four of arithmetic (calculator), three on a small SQLite shop database
(sql_query) and three on ragapp's own docs/ (search_documents). All three tools are offered for every task.
A task counts as "right tool" when the expected tool was called, and "right answer" when the answer holds
the expected value as a whole word. Greedy decoding: the counts repeat run to run; the seconds do not.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragapp.agent import run_agent
from ragapp.app import App
from ragapp.react_chat import ReActChatModel
from ragapp.tools.calculator import calculator_tool
from ragapp.tools.search_documents import PassageLedger, search_documents_tool
from ragapp.tools.sql_query import ReadOnlyDatabase, sql_query_tool

TASKS = [
    ("What is 1234 * 5678?", "7006652", "calculator"),
    ("What is 15% of 2480?", "372", "calculator"),
    ("Compute (17 + 25) * 3.", "126", "calculator"),
    ("What is 2 to the power of 20?", "1048576", "calculator"),
    ("How many customers are in the database?", "7", "sql_query"),
    ("How many customers live in Oslo?", "3", "sql_query"),
    ("What is the total of all orders?", "35", "sql_query"),
    ("How do I remove documents whose files were deleted?", "--sync", "search_documents"),
    ("Which command starts the HTTP server?", "ragapp serve", "search_documents"),
    ("What is the default embedding model?", "all-MiniLM-L6-v2", "search_documents"),
]
CUSTOMERS = [
    ("Ada", "Paris"),
    ("Bob", "Oslo"),
    ("Cy", "Rome"),
    ("Di", "Oslo"),
    ("Eve", "Lyon"),
    ("Fay", "Oslo"),
    ("Gus", "Rome"),
]


def shop(path: Path) -> str:
    if not path.exists():
        with sqlite3.connect(path) as c:
            c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
            c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total NUMERIC)")
            c.executemany("INSERT INTO customers (name, city) VALUES (?, ?)", CUSTOMERS)
            c.executemany("INSERT INTO orders (customer_id, total) VALUES (?, ?)", [(1, 10), (2, 20), (1, 5)])
    return f"sqlite:///{path}"


def holds(answer: str, expected: str) -> bool:
    return re.search(r"(?<![\w.-])" + re.escape(expected.lower()) + r"(?!\w)", answer.lower()) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="keep the workspace and database here (reused by later runs)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ragapp-agent-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    app = App(folder / "ws")
    app.ingest([ROOT / "docs"], sync=True)
    database = ReadOnlyDatabase(shop(folder / "shop.db"))
    sampling = app.sampling()
    sampling = sampling.model_copy(update={"stop": []})

    totals = {}
    for choose in (False, True):
        label = "tool by likelihood" if choose else "tool as written (baseline)"
        print(f"\n{label}")
        right_tool = right_answer = 0
        seconds = []
        for task, expected, tool in TASKS:
            ledger = PassageLedger()
            tools = [
                search_documents_tool(lambda q: app.search(q, k=app.config.agent.search_k), ledger),
                sql_query_tool(database),
                calculator_tool(),
            ]
            model = ReActChatModel(generator=app.generator, sampling=sampling, choose_tool=choose)
            started = time.perf_counter()
            result = run_agent(model, tools, task, max_steps=app.config.agent.max_steps, ledger=ledger)
            seconds.append(time.perf_counter() - started)
            called = [s.tool for s in result.tool_calls]
            ok_tool, ok_answer = tool in called, holds(result.answer, expected)
            right_tool += ok_tool
            right_answer += ok_answer
            answer = " ".join(result.answer.split())[:70]
            print(
                f"  {'✓' if ok_tool else '✗'}{'✓' if ok_answer else '✗'} {task[:50]:50} {','.join(called) or '-':28} {answer}"
            )
        totals[choose] = (right_tool, right_answer)
        print(
            f"  right tool {right_tool}/{len(TASKS)}, right answer {right_answer}/{len(TASKS)}, "
            f"median {statistics.median(seconds):.1f} s per task"
        )
    (bt, ba), (ct, ca) = totals[False], totals[True]
    print(
        f"\nby likelihood vs as written: right tool {ct}/{bt} = {ct / max(bt, 1):.2f}×, right answer {ca}/{ba} = {ca / max(ba, 1):.2f}×"
    )


if __name__ == "__main__":
    main()
