"""How metric values are written for people, in one place: the CLI (`ragapp eval show | list | compare`)
and the HTML report show the same run with the same strings. No plotting or model imports here, so the
CLI can use it without loading what the report needs."""

from __future__ import annotations

import math

COUNTS = frozenset({"judge_unparsed", "judge_errors"})  # whole numbers, however small


def format_seconds(value: float) -> str:
    if value < 1:
        return f"{value:.3f} s"
    if value < 100:
        return f"{value:.2f} s"
    return f"{value:,.0f} s"


def format_duration(seconds: float) -> str:
    """Wall time for people: "42.1 s", "4 min 05 s", "2 h 03 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_metric(name: str, value: float | None) -> str:
    """3 decimals for 0..1 scores, 2 for perplexity and other numbers, seconds, whole token and judge counts."""
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if name.endswith("_s"):
        return format_seconds(value)
    if name.endswith("_tokens") or name in COUNTS:
        return f"{round(value):,}"
    if name == "perplexity":
        return f"{value:.2f}"
    if 0 <= value <= 1:
        return f"{value:.3f}"
    return f"{value:,.2f}"


def format_change(name: str, delta: float | None) -> str:
    """A difference of metric `name` (run B minus run A), signed, with the metric's own decimals."""
    if delta is None or math.isnan(delta):
        return "—"
    return ("-" if delta < 0 else "+") + format_metric(name, abs(delta))
