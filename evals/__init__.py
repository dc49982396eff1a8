"""Evaluation: metrics, batch runs over question/answer datasets, stored runs, comparisons, gates, reports.

    from ragapp import App
    from ragapp.evals import evaluate
    run = evaluate(App(".ragapp"), "questions.jsonl")
    run.aggregates["rougeL"]

Names are imported on first use, so `import ragapp.evals.results` (the CLI does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Comparison": "ragapp.evals.comparison",
    "compare": "ragapp.evals.comparison",
    "Dataset": "ragapp.evals.dataset",
    "Example": "ragapp.evals.dataset",
    "load_dataset": "ragapp.evals.dataset",
    "ItemResult": "ragapp.evals.results",
    "Problem": "ragapp.evals.results",
    "RunResult": "ragapp.evals.results",
    "evaluate": "ragapp.evals.runner",
    "score_predictions": "ragapp.evals.runner",
    "RunStore": "ragapp.evals.runs",
    "write_report": "ragapp.evals.report",
}
__all__ = [  # the names of _EXPORTS, written out so that tools reading __all__ need not run this module
    "Comparison",
    "Dataset",
    "Example",
    "ItemResult",
    "Problem",
    "RunResult",
    "RunStore",
    "compare",
    "evaluate",
    "load_dataset",
    "score_predictions",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ragapp.evals' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
