"""Evaluation: metrics, batch runs over question/answer datasets, stored runs, comparisons, gates, reports.

    from ragapp import App
    from evals import evaluate
    run = evaluate(App(".ragapp"), "questions.jsonl")
    run.aggregates["rougeL"]

Names are imported on first use, so `import evals.results` (the CLI does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Comparison": "evals.comparison",
    "compare": "evals.comparison",
    "Dataset": "evals.dataset",
    "Example": "evals.dataset",
    "load_dataset": "evals.dataset",
    "ItemResult": "evals.results",
    "Problem": "evals.results",
    "RunResult": "evals.results",
    "evaluate": "evals.runner",
    "score_predictions": "evals.runner",
    "RunStore": "evals.runs",
    "write_report": "evals.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evals' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
