"""Quality gates for CI: absolute floors (`rougeL=0.25`) and allowed drops against a baseline run."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ragapp.evals.results import Metrics
from ragapp.evals.summary import LOWER_IS_BETTER

from ragapp.errors import RagappError, UsageError


class GateFailed(RagappError):
    """A run is below a required floor or dropped more than allowed; the message says which and by how much."""

    exit_code = 1


def parse_thresholds(text: str, option: str) -> dict[str, float]:
    """`"rougeL=0.25,bleu=0.1"` -> {"rougeL": 0.25, "bleu": 0.1}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or not math.isfinite(number):
            raise UsageError(f"{option}: expected METRIC=NUMBER[,METRIC=NUMBER...], got {part!r}")
        out[name] = number
    if not out:
        raise UsageError(f"{option}: no METRIC=NUMBER given")
    return out


def _known(aggregates: Metrics, name: str, option: str) -> None:
    if name not in aggregates:
        raise UsageError(f"{option}: this run has no metric {name!r}; it has: {', '.join(sorted(aggregates))}")


def check_floors(aggregates: Metrics, floors: Mapping[str, float]) -> list[str]:
    """One message per metric below its floor (for lower-is-better metrics: above its ceiling)."""
    failures = []
    for name, floor in floors.items():
        _known(aggregates, name, "--fail-under")
        value = aggregates[name]
        if value is None:
            failures.append(f"{name} has no value in this run, required {floor:g}")
        elif name in LOWER_IS_BETTER and value > floor:
            failures.append(
                f"{name} = {value:.4g} is {value - floor:.4g} above the allowed {floor:g} (lower is better)"
            )
        elif name not in LOWER_IS_BETTER and value < floor:
            failures.append(f"{name} = {value:.4f} is {floor - value:.4f} below the required {floor:g}")
    return failures


def check_drops(aggregates: Metrics, baseline: Metrics, allowed: Mapping[str, float], baseline_name: str) -> list[str]:
    """One message per metric that got worse than `baseline` by more than allowed (absolute difference)."""
    failures = []
    for name, limit in allowed.items():
        _known(aggregates, name, "--max-drop-vs")
        value, base = aggregates[name], baseline.get(name)
        if base is None:
            raise UsageError(f"--max-drop-vs: baseline run {baseline_name!r} has no value for {name!r}")
        if value is None:
            failures.append(f"{name} has no value in this run (baseline {baseline_name!r}: {base:.4f})")
            continue
        drop = value - base if name in LOWER_IS_BETTER else base - value
        if drop > limit:
            word = "rose" if name in LOWER_IS_BETTER else "dropped"
            failures.append(
                f"{name} {word} by {drop:.4f} vs run {baseline_name!r} ({base:.4f} -> {value:.4f}), "
                f"more than the allowed {limit:g}"
            )
    return failures


def enforce(failures: list[str]) -> None:
    if failures:
        raise GateFailed("quality gate failed: " + "; ".join(failures))
