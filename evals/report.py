"""One evaluation run as a single HTML page: its metrics, their distributions, the worst answers and their sources
(each answer sentence marked supported or not, abstentions badged, the LLM judge's claims and verdicts).

The page is self-contained so that it opens from file:// offline, can be attached to a CI job and
still reads the same later: plots are PNG data URIs drawn with matplotlib's Agg canvas, CSS is
inline, and there are no scripts, fonts or other fetches (a Content-Security-Policy says so to the
browser too). Everything that comes from the run (questions, answers, passages, config) is escaped.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from ragapp.evals.formatting import format_duration, format_metric, format_seconds
from ragapp.evals.metrics import source_matches
from ragapp.evals.results import ItemResult, Metrics, RunResult, shown_question
from ragapp.evals.summary import LOWER_IS_BETTER, metric_names

from ragapp.prompt import cited_numbers

# --- metric names: grouping, ordering, formatting -------------------------------------------------

ANSWER, GROUNDING, RETRIEVAL, COST, OTHER = "Answer quality", "Groundedness", "Retrieval", "Cost", "Other"
_GROUPS = (ANSWER, GROUNDING, RETRIEVAL, COST, OTHER)

_ROUGE = re.compile(r"rouge(?P<kind>\w+?)(?P<part>_p|_r)?")
_BLEU_PRECISION = re.compile(r"bleu_p(?P<n>\d+)")
_RETRIEVAL = re.compile(r"(?P<family>\w+)@(?P<k>\d+)")
_RETRIEVAL_ORDER = ("hit", "recall", "precision", "mrr", "map", "ndcg")
_COST_ORDER = ("latency_s", "latency_p50_s", "latency_p95_s", "prompt_tokens", "completion_tokens")
_ROUGE_PARTS = {None: "F1", "_p": "precision", "_r": "recall"}
_GROUNDING_ORDER = (
    "groundedness",
    "citation_precision",
    "citation_recall",
    "answer_relevance",
    "faithfulness",
    "abstention_rate",
    "judge_unparsed",
    "judge_errors",
)
_GROUNDING_COUNTS = ("judge_unparsed", "judge_errors")
# Per-item values worth a histogram; the others are 0/1 per item or counts, read best as run-level bars.
_GROUNDING_HISTOGRAMS = ("groundedness", "answer_relevance", "faithfulness")


def metric_group(name: str) -> str:
    """Which table section (and which plots) a metric belongs to."""
    if _ROUGE.fullmatch(name) or name in ("bleu", "bleu_bp", "perplexity") or _BLEU_PRECISION.fullmatch(name):
        return ANSWER
    if name in _GROUNDING_ORDER:
        return GROUNDING
    if _RETRIEVAL.fullmatch(name):
        return RETRIEVAL
    if name in _COST_ORDER or name.endswith(("_s", "_tokens")):
        return COST
    return OTHER


def _sort_key(name: str) -> tuple[int, int, tuple[Any, ...]]:
    """Reading order: ROUGE-1, -2, -L (F1, P, R), BLEU and its parts, perplexity; retrieval by kind then K."""
    group = _GROUPS.index(metric_group(name))
    if m := _ROUGE.fullmatch(name):
        kind = m["kind"]
        kind_key = (0, int(kind), "") if kind.isdigit() else (1, 0, kind)
        return group, 0, (kind_key, list(_ROUGE_PARTS).index(m["part"]))
    if name == "bleu":
        return group, 1, (0,)
    if name == "bleu_bp":
        return group, 1, (1,)
    if m := _BLEU_PRECISION.fullmatch(name):
        return group, 1, (2 + int(m["n"]),)
    if name == "perplexity":
        return group, 2, ()
    if name in _GROUNDING_ORDER:
        return group, _GROUNDING_ORDER.index(name), ()
    if m := _RETRIEVAL.fullmatch(name):
        family = m["family"]
        rank = _RETRIEVAL_ORDER.index(family) if family in _RETRIEVAL_ORDER else len(_RETRIEVAL_ORDER)
        return group, 0, (rank, family, int(m["k"]))
    if name in _COST_ORDER:
        return group, _COST_ORDER.index(name), ()
    return group, len(_COST_ORDER), ()  # others keep the order they came in (the sort is stable)


def ordered_metrics(names: Iterable[str]) -> list[str]:
    return sorted(dict.fromkeys(names), key=_sort_key)


def _unit_range(name: str) -> bool:
    """Scores on 0..1 (ragapp.evals.metrics puts BLEU there too, not on sacrebleu's 0..100)."""
    return bool(_ROUGE.fullmatch(name) or _RETRIEVAL.fullmatch(name) or _BLEU_PRECISION.fullmatch(name)) or name in (
        "bleu",
        "bleu_bp",
        *(n for n in _GROUNDING_ORDER if n not in _GROUNDING_COUNTS),
    )


def describe_metric(name: str) -> str:
    """A few words on what a known metric measures; unknown metrics get none."""
    if m := _ROUGE.fullmatch(name):
        return f"ROUGE-{m['kind']} {_ROUGE_PARTS[m['part']]}, mean per item"
    if m := _RETRIEVAL.fullmatch(name):
        k = m["k"]
        return {
            "hit": f"questions with an expected source in the top {k}",
            "recall": f"expected sources found in the top {k}, mean per item",
            "precision": f"top-{k} passages from an expected source, mean per item",
            "mrr": f"reciprocal rank of the first expected source within {k}, mean",
            "map": f"mean average precision at {k}",
            "ndcg": f"normalised discounted cumulative gain at {k}, mean",
        }.get(m["family"], "")
    if m := _BLEU_PRECISION.fullmatch(name):
        return f"corpus BLEU {m['n']}-gram precision"
    return {
        "bleu": "corpus BLEU, 0–1 (per item: sentence BLEU)",
        "bleu_bp": "corpus BLEU brevity penalty",
        "perplexity": "generator perplexity of the references, token-weighted",
        "groundedness": "answer sentences supported by a passage, mean per answer (abstained answers excluded)",
        "citation_precision": "cited passages from an expected source, mean per answer that cites any",
        "citation_recall": "expected sources among the cited passages, mean per item",
        "answer_relevance": "cosine of the question's and the answer's embeddings, clipped to 0–1, mean",
        "faithfulness": "LLM judge: the answer's claims the passages support, mean per judged answer",
        "abstention_rate": "answers that said the documents do not have it",
        "judge_unparsed": "LLM judge replies that could not be read (claims lists and verdicts), total",
        "judge_errors": "answers the LLM judge failed on (HTTP errors after retries)",
        "reward": "reward model score of the answer (higher is better; not on a 0–1 scale)",
        "latency_s": "mean seconds per question",
        "latency_p50_s": "median seconds per question",
        "latency_p95_s": "95th percentile seconds per question",
        "prompt_tokens": "mean prompt tokens per question",
        "completion_tokens": "mean answer tokens per question",
    }.get(name, "")


def _direction(name: str) -> str:
    if name in LOWER_IS_BETTER:
        return "↓"
    if metric_group(name) == COST:
        return ""
    return "↑"


# --- which items, which values ----------------------------------------------------------------------


def rank_metric(items: Sequence[ItemResult]) -> str | None:
    """The metric "worst" is judged by: rougeL, else the first answer metric present, else any other score."""
    names = ordered_metrics(metric_names([i for i in items if i.error is None]))
    if "rougeL" in names:
        return "rougeL"
    answer = [n for n in names if metric_group(n) == ANSWER]
    preferred = [n for n in answer if n not in LOWER_IS_BETTER] + answer
    others = [n for n in names if metric_group(n) == OTHER]
    return next(iter(preferred + others), None)


def worst_items(run: RunResult, n: int, by: str | None = None) -> list[ItemResult]:
    """The `n` scored items with the worst `by` (lowest, or highest for lower-is-better metrics)."""
    by = by or rank_metric(run.items)
    if by is None or n <= 0:
        return []
    sign = -1.0 if by in LOWER_IS_BETTER else 1.0
    ranked = [i for i in run.scored if (v := i.metrics.get(by)) is not None and not math.isnan(v)]
    ranked.sort(key=lambda i: (sign * float(i.metrics[by] or 0.0), i.position))
    return ranked[:n]


def _values(items: Iterable[ItemResult], get: Callable[[ItemResult], float | None]) -> list[float]:
    out = []
    for item in items:
        value = get(item)
        if value is not None and math.isfinite(value):
            out.append(float(value))
    return out


def _metric(name: str) -> Callable[[ItemResult], float | None]:
    return lambda item: item.metrics.get(name)


def _timing(name: str) -> Callable[[ItemResult], float | None]:
    return lambda item: item.timings.get(name)


# --- plots ------------------------------------------------------------------------------------------

_DPI = 200  # drawn at twice the displayed size so it stays sharp on high-density screens
_SIZE = (5.6, 3.3)  # inches at 100 px per inch: 560 × 330 CSS px, two to a row at 1200 px
_BLUE, _ORANGE, _GREEN, _RED, _GREY = "#3566a8", "#d9822b", "#2e8b57", "#c0392b", "#8c959f"
_FAMILY_COLOURS = {
    "hit": _BLUE,
    "recall": "#6d9bd6",
    "precision": "#8e6bbf",
    "mrr": _GREEN,
    "map": "#5aa17f",
    "ndcg": _ORANGE,
}


@dataclass(frozen=True)
class Plot:
    key: str  # what it shows, for tests and anchors: "hist-rougeL", "grounding", "retrieval", "latency", "scatter"
    alt: str
    caption: str
    png: bytes
    width: int  # CSS pixels
    height: int

    def html(self) -> str:
        uri = "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")
        return (
            f'<figure class="plot" id="plot-{escape(self.key)}" data-plot="{escape(self.key)}">'
            f'<img src="{uri}" alt="{escape(self.alt)}" width="{self.width}" height="{self.height}">'
            f"<figcaption>{escape(self.caption)}</figcaption></figure>"
        )


def _figure(size: tuple[float, float] = _SIZE) -> tuple[Figure, Axes]:
    """A figure on its own Agg canvas: no pyplot, so no global state and no GUI backend."""
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e4e8ec", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)
    return fig, ax


def _integer_ticks(ax: Axes) -> None:
    """Counts on the y axis: whole-number ticks only (the default locator, an AutoLocator, is a MaxNLocator)."""
    locator = ax.yaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):
        locator.set_params(integer=True)


def _legend_above(ax: Axes) -> None:
    """Mean/median keys go on the title's line, right-aligned, where no bar can hide them."""
    ax.legend(fontsize=8, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, borderaxespad=0.1)


def _plot(key: str, fig: Figure, alt: str, caption: str) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white", metadata={"Software": None})
    width, height = fig.get_size_inches() * 100
    return Plot(key, alt, caption, buf.getvalue(), round(width), round(height))


def _stats(name: str, values: Sequence[float]) -> str:
    f = lambda v: format_metric(name, v)
    return f"mean {f(float(np.mean(values)))}, median {f(float(np.median(values)))}, min {f(min(values))}, max {f(max(values))}"


def _histogram(key: str, name: str, values: Sequence[float], what: str, colour: str = _BLUE) -> Plot:
    fig, ax = _figure()
    if _unit_range(name) or (name != "perplexity" and min(values) >= 0 and max(values) <= 1):
        bins: Any = np.linspace(0, 1, 21)
        ax.set_xlim(0, 1)
    else:
        bins = min(30, max(5, round(math.sqrt(len(values)) * 2)))
    ax.hist(values, bins=bins, color=colour, edgecolor="white", linewidth=0.6)
    mean, median = float(np.mean(values)), float(np.median(values))
    ax.axvline(mean, color="#1f2328", linestyle="--", linewidth=1, label=f"mean {format_metric(name, mean)}")
    ax.axvline(median, color=_ORANGE, linestyle=":", linewidth=1.4, label=f"median {format_metric(name, median)}")
    _legend_above(ax)
    ax.set_title(f"{name} per item", fontsize=10, loc="left")
    ax.set_xlabel(name, fontsize=9)
    ax.set_ylabel("items", fontsize=9)
    _integer_ticks(ax)
    stats = _stats(name, values)
    alt = f"Histogram of {what} {name} over {len(values)} scored items: {stats}."
    return _plot(key, fig, alt, f"{what.capitalize()} {name}, {len(values)} items: {stats}.")


def _bars(key: str, what: str, aggregates: Metrics, names: Sequence[str], colours: Sequence[str]) -> Plot:
    """Run-level values of 0..1 metrics side by side, each bar labelled with its value."""
    values = [float(aggregates[n] or 0.0) for n in names]
    fig, ax = _figure()  # the same size as the other plots, so the grid lines up and text matches
    bars = ax.bar(names, values, color=list(colours), width=0.6)
    ax.bar_label(bars, labels=[format_metric(n, v) for n, v in zip(names, values)], fontsize=8, padding=2)
    ax.set_ylim(0, max(1.0, max(values)) * 1.12)
    if len(names) > 6 or (len(names) > 3 and max(len(n) for n in names) > 12):
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(f"{what.capitalize()} metrics (run level)", fontsize=10, loc="left")
    listed = ", ".join(f"{n} {format_metric(n, v)}" for n, v in zip(names, values))
    return _plot(key, fig, f"Bar chart of run-level {what} metrics: {listed}.", f"{what.capitalize()}: {listed}.")


def _retrieval_bars(aggregates: Metrics) -> Plot | None:
    names = [n for n in ordered_metrics(aggregates) if metric_group(n) == RETRIEVAL and aggregates[n] is not None]
    if not names:
        return None
    colours = [_FAMILY_COLOURS.get(_RETRIEVAL.fullmatch(n)["family"], _GREY) for n in names]  # type: ignore[index]
    return _bars("retrieval", "retrieval", aggregates, names, colours)


def _grounding_bars(aggregates: Metrics) -> Plot | None:
    """Groundedness, citation precision and recall, relevance, faithfulness and the abstention rate."""
    names = [
        n
        for n in ordered_metrics(aggregates)
        if metric_group(n) == GROUNDING and n not in _GROUNDING_COUNTS and aggregates[n] is not None
    ]
    if not names:
        return None
    colours = [_ORANGE if n == "abstention_rate" else _GREEN if n == "faithfulness" else _BLUE for n in names]
    return _bars("grounding", "groundedness", aggregates, names, colours)


def _latency_histogram(items: Sequence[ItemResult]) -> Plot | None:
    values = _values(items, _timing("latency_s"))
    if not values:
        return None
    fig, ax = _figure()
    bins = min(30, max(5, round(math.sqrt(len(values)) * 2)))
    ax.hist(values, bins=bins, color=_GREEN, edgecolor="white", linewidth=0.6)
    p50, p95 = (float(np.percentile(values, q)) for q in (50, 95))
    ax.axvline(p50, color="#1f2328", linestyle="--", linewidth=1, label=f"p50 {format_seconds(p50)}")
    ax.axvline(p95, color=_RED, linestyle=":", linewidth=1.4, label=f"p95 {format_seconds(p95)}")
    _legend_above(ax)
    ax.set_title("Latency per question", fontsize=10, loc="left")
    ax.set_xlabel("seconds", fontsize=9)
    ax.set_ylabel("items", fontsize=9)
    _integer_ticks(ax)
    summary = f"p50 {format_seconds(p50)}, p95 {format_seconds(p95)}, max {format_seconds(max(values))}"
    alt = f"Histogram of per-question latency over {len(values)} items: {summary}."
    return _plot("latency", fig, alt, f"Latency, {len(values)} items: {summary}.")


def _hit_metric(items: Sequence[ItemResult]) -> str | None:
    """hit@K at the largest K: was an expected source among everything the generator saw."""
    hits = [n for n in ordered_metrics(metric_names(items)) if (m := _RETRIEVAL.fullmatch(n)) and m["family"] == "hit"]
    return hits[-1] if hits else None


def _scatter(items: Sequence[ItemResult], by: str | None) -> Plot | None:
    """Score against latency, coloured by whether retrieval found an expected source: are slow or
    unretrieved questions the badly answered ones?"""
    if by is None:
        return None
    pairs = [
        (item, float(s), float(t))
        for item in items
        if (s := item.metrics.get(by)) is not None
        and (t := item.timings.get("latency_s")) is not None
        and math.isfinite(s)
        and math.isfinite(t)
    ]
    if len(pairs) < 3:
        return None
    fig, ax = _figure()
    hit = _hit_metric([p[0] for p in pairs])
    groups: list[tuple[str, str, list[tuple[float, float]]]] = []
    if hit:
        for label, colour, test in (
            (f"{hit} = 1 (expected source retrieved)", _BLUE, lambda v: v is not None and v > 0),
            (f"{hit} = 0 (missed)", _RED, lambda v: v is not None and v <= 0),
            ("no expected sources", _GREY, lambda v: v is None),
        ):
            pts = [(t, s) for item, s, t in pairs if test(item.metrics.get(hit))]
            if pts:
                groups.append((label, colour, pts))
    else:
        groups.append(("items", _BLUE, [(t, s) for _, s, t in pairs]))
    for label, colour, pts in groups:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color=colour, alpha=0.8, label=label, linewidths=0)
    if hit:
        ax.legend(fontsize=7, frameon=False, loc="best")
    if _unit_range(by):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="x", color="#e4e8ec", linewidth=0.8)
    ax.set_title(f"{by} against latency", fontsize=10, loc="left")
    ax.set_xlabel("latency (s)", fontsize=9)
    ax.set_ylabel(by, fontsize=9)
    scores, times = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    r = float(np.corrcoef(scores, times)[0, 1]) if scores.std() > 0 and times.std() > 0 else float("nan")
    corr = f"Pearson r = {r:.2f}" if math.isfinite(r) else "no correlation measurable"
    colouring = f", coloured by {hit}" if hit else ""
    alt = f"Scatter plot of per-item {by} against latency for {len(pairs)} items{colouring}; {corr}."
    return _plot("scatter", fig, alt, f"{by} against latency, {len(pairs)} items{colouring}; {corr}.")


def plots(run: RunResult) -> list[Plot]:
    """Every plot the run has data for; a score-only run has no latency or retrieval plots, an empty run none."""
    scored = run.scored
    out: list[Plot] = []
    names = ordered_metrics(metric_names(scored))
    for name in names:
        if metric_group(name) not in (ANSWER, OTHER) and name not in _GROUNDING_HISTOGRAMS:
            continue  # retrieval and groundedness have their bar charts
        if (m := _ROUGE.fullmatch(name)) and m["part"]:
            continue  # ROUGE precision and recall would triple the plots for little
        values = _values(scored, _metric(name))
        if values:
            what = "sentence" if name == "bleu" else "per-item"
            out.append(_histogram(f"hist-{name}", name, values, what, _ORANGE if name == "perplexity" else _BLUE))
    extras = (
        _grounding_bars(run.aggregates),
        _retrieval_bars(run.aggregates),
        _latency_histogram(scored),
        _scatter(scored, rank_metric(scored)),
    )
    for extra in extras:
        if extra is not None:
            out.append(extra)
    return out


# --- HTML -------------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --border: #d0d7de; --panel: #f6f8fa; --accent: #3566a8;
        --good: #1a7f37; --good-bg: #dafbe1; --bad: #cf222e; --bad-bg: #ffebe9; --warn: #9a6700; --warn-bg: #fff8c5; }
* { box-sizing: border-box; }
html { background: #fff; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 2px; overflow-wrap: anywhere; }
h2 { font-size: 20px; margin: 40px 0 14px; padding-bottom: 6px; border-bottom: 1px solid var(--border); }
h3 { font-size: 16px; margin: 0; overflow-wrap: anywhere; }
h4 { font-size: 12px; margin: 14px 0 6px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.subtitle { color: var(--muted); margin: 0 0 18px; }
nav { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 14px; margin: 0 0 20px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
         background: var(--panel); border: 1px solid var(--border); vertical-align: middle; }
.badge.completed, .badge.match { background: var(--good-bg); color: var(--good); border-color: #aceebb; }
.badge.failed, .badge.missing { background: var(--bad-bg); color: var(--bad); border-color: #ffcecb; }
.badge.interrupted, .badge.running { background: var(--warn-bg); color: var(--warn); border-color: #f5e0a0; }
dl.meta { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 10px 28px; margin: 0;
          padding: 16px 20px; background: var(--panel); border: 1px solid var(--border); border-radius: 8px; }
dl.meta div { min-width: 0; }
dl.meta div.wide { grid-column: span 2; }
dl.meta dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin: 0 0 18px; }
.card { flex: 1 1 160px; border: 1px solid var(--border); border-radius: 8px; padding: 10px 16px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .name { font-size: 13px; color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--border); text-align: left; vertical-align: top; }
th { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.narrow { width: 1%; }
tr.group th { background: var(--panel); color: var(--fg); font-size: 13px; text-transform: none; letter-spacing: 0; }
table.summary td:first-child { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 14px; }
table.summary td.about { color: var(--muted); font-size: 14px; }
.plots { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 20px; }
figure.plot { margin: 0; padding: 12px; border: 1px solid var(--border); border-radius: 8px; background: #fff; }
figure.plot img { display: block; width: 100%; height: auto; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
.item { border: 1px solid var(--border); border-radius: 8px; padding: 16px 20px; margin: 0 0 18px; }
.item > header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 12px; }
.item .rank { font-weight: 700; color: var(--muted); }
.item .score { margin-left: auto; font-weight: 600; font-variant-numeric: tabular-nums; }
.question { font-size: 16px; font-weight: 500; margin: 10px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--panel); border-radius: 6px;
        padding: 8px 12px; margin: 0; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; }
.chip { font-size: 12px; padding: 2px 8px; border-radius: 6px; background: var(--panel); border: 1px solid var(--border);
        font-variant-numeric: tabular-nums; white-space: nowrap; }
.chip b { font-weight: 600; margin-right: 4px; }
.chip.rank-by { border-color: var(--accent); background: #ddf4ff; }
.chip.timing { color: var(--muted); }
ul.sources { margin: 0; padding-left: 20px; }
ul.sources li { overflow-wrap: anywhere; }
/* Fixed columns: opening a passage must not squeeze the others. */
table.citations { font-size: 14px; table-layout: fixed; }
table.citations th { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
table.citations td { overflow-wrap: anywhere; }
table.citations tr.match td { background: #f0fbf3; }
col.c-n { width: 44px; } col.c-source { width: 25%; } col.c-heading { width: 15%; }
col.c-score { width: 68px; } col.c-cited { width: 72px; } col.c-expected { width: 96px; }
.badge { white-space: nowrap; }
.badge.abstained, .badge.unparsed { background: var(--warn-bg); color: var(--warn); border-color: #f5e0a0; }
.sentence.supported { background: #f0fbf3; box-shadow: inset 0 -2px 0 #aceebb; }
.sentence.unsupported { background: var(--bad-bg); box-shadow: inset 0 -2px 0 #ffcecb; }
sup.marks { color: var(--accent); font-size: 11px; margin-left: 1px; }
p.legend { font-size: 12px; margin: 4px 0 0; }
ul.claims { margin: 0; padding-left: 20px; }
ul.claims li { margin: 2px 0; overflow-wrap: anywhere; }
details summary { cursor: pointer; color: var(--accent); white-space: nowrap; }
.passage { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; background: var(--panel); border-radius: 6px;
           padding: 8px 10px; margin-top: 6px; max-height: 24em; overflow: auto; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
pre.config { background: var(--panel); border: 1px solid var(--border); border-radius: 8px; padding: 14px 18px;
             font-size: 13px; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere; }
pre.error { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-size: 13px; color: var(--bad); }
.empty { color: var(--muted); font-style: italic; }
@media (max-width: 820px) { .plots, .answers { grid-template-columns: 1fr; } main { padding: 16px; } }
@media print { figure.plot, .item { break-inside: avoid; } }
"""

# The page may load nothing but its own inline CSS and data: images: no scripts at all.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(sep=" ", timespec="seconds") if moment else "—"


def _header(run: RunResult) -> str:
    scored = len(run.scored)
    errors = len(run.items) - scored
    models = run.models or {}
    rows: list[tuple[str, str]] = [
        ("Run", f"#{_e(run.id)} · {_e(run.kind)}"),
        ("Status", f'<span class="badge {_e(run.status)}">{_e(run.status)}</span>'),
        ("Dataset", f'<span class="mono">{_e(run.dataset)}</span>'),
        ("Started", _e(_when(run.started_at))),
        ("Finished", _e(_when(run.finished_at))),
        ("Wall time", f"{_e(format_duration(run.seconds))} <span class='muted'>({run.seconds:,.1f} s)</span>"),
        ("Embedding model", _e(models.get("embedding", "—"))),
        ("Generator model", _e(models.get("generator", "—"))),
    ]
    rows += [(f"{k.capitalize()} model", _e(v)) for k, v in models.items() if k not in ("embedding", "generator")]
    counts = f"{scored} scored · {errors} error{'s' * (errors != 1)} · {len(run.problems)} dataset problem{'s' * (len(run.problems) != 1)}"
    rows.append(("Items", _e(counts)))
    if run.total and run.saved != run.total:
        rows.append(("Progress", _e(f"{run.saved} of {run.total} saved")))
    meta = "".join(f"<div{' class=wide' * (k == 'Items')}><dt>{k}</dt><dd>{v}</dd></div>" for k, v in rows)
    return (
        f"<header><h1>{_e(run.name)}</h1>"
        f'<p class="subtitle">Evaluation report · run #{_e(run.id)} · {_e(run.kind)} run on '
        f'<span class="mono">{_e(run.dataset)}</span></p>'
        '<nav><a href="#summary">Metrics</a><a href="#plots">Plots</a><a href="#worst">Worst items</a>'
        '<a href="#not-scored">Errors &amp; problems</a><a href="#config">Config</a></nav>'
        f'<dl class="meta">{meta}</dl></header>'
    )


_HEADLINE = (r"rougeL", r"groundedness", r"rouge1", r"bleu", r"hit@\d+", r"mrr@\d+", r"latency_p50_s", r"perplexity")


def _headline(aggregates: Metrics) -> str:
    """A few big numbers to read first: the first present of each kind in `_HEADLINE`."""
    names = ordered_metrics(aggregates)
    picked: list[str] = []
    for pattern in _HEADLINE:
        hit = next((n for n in names if re.fullmatch(pattern, n) and aggregates[n] is not None), None)
        if hit and len(picked) < 5:
            picked.append(hit)
    cards = "".join(
        f'<div class="card"><div class="value">{_e(format_metric(n, aggregates[n]))}</div>'
        f'<div class="name mono">{_e(n)}</div></div>'
        for n in picked
    )
    return f'<div class="cards">{cards}</div>' if cards else ""


def _summary(run: RunResult) -> str:
    aggregates = run.aggregates or {}
    if not aggregates:
        return '<section id="summary"><h2>Metrics</h2><p class="empty">No metrics: nothing was scored.</p></section>'
    scored = run.scored
    body = []
    group = None
    for name in ordered_metrics(aggregates):
        if metric_group(name) != group:
            group = metric_group(name)
            body.append(f'<tr class="group"><th colspan="5">{_e(group)}</th></tr>')
        n = sum(1 for i in scored if i.metrics.get(name) is not None or i.timings.get(name) is not None)
        body.append(
            f"<tr><td>{_e(name)}</td><td class='num'>{_e(format_metric(name, aggregates[name]))}</td>"
            f"<td class='num'>{n or ''}</td><td class='num'>{_direction(name)}</td>"
            f"<td class='about'>{_e(describe_metric(name))}</td></tr>"
        )
    return (
        '<section id="summary"><h2>Metrics</h2>'
        + _headline(aggregates)
        + '<table class="summary"><thead><tr><th>Metric</th><th class="num">Value</th><th class="num">Items</th>'
        '<th class="num" title="which direction is better">Better</th><th>About</th></tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table></section>"
    )


def _plots_section(run: RunResult) -> str:
    figures = plots(run)
    inner = (
        f'<div class="plots">{"".join(p.html() for p in figures)}</div>'
        if figures
        else '<p class="empty">No plots: no item has scores or timings.</p>'
    )
    return f'<section id="plots"><h2>Plots</h2>{inner}</section>'


def _chips(item: ItemResult, by: str | None) -> str:
    chips = [
        f'<span class="chip{" rank-by" if name == by else ""}"><b>{_e(name)}</b>{_e(format_metric(name, value))}</span>'
        for name in ordered_metrics(item.metrics)
        if (value := item.metrics[name]) is not None
    ]
    chips += [
        f'<span class="chip timing"><b>{_e(name)}</b>{_e(format_metric(name, item.timings[name]))}</span>'
        for name in ("latency_s", "prompt_tokens", "completion_tokens")
        if item.timings.get(name) is not None
    ]
    return f'<div class="chips">{"".join(chips)}</div>' if chips else ""


def _matches(expected: Sequence[str], citation: dict[str, Any]) -> bool:
    source = citation.get("source")
    if not source:
        return False
    return any(source_matches(e, str(source), citation.get("anchor")) for e in expected)


def _expected_sources(item: ItemResult) -> str:
    if not item.expected_sources:
        return "<h4>Expected sources</h4><p class='empty'>None given.</p>"
    rows = []
    for expected in item.expected_sources:
        found = any(_matches([expected], c) for c in item.citations)
        badge = (
            '<span class="badge match">retrieved</span>'
            if found
            else '<span class="badge missing">not retrieved</span>'
        )
        rows.append(f"<li><span class='mono'>{_e(expected)}</span> {badge}</li>")
    return f"<h4>Expected sources</h4><ul class='sources'>{''.join(rows)}</ul>"


_EXPECTED_BADGE = '<span class="badge match">expected</span>'


def _citations(item: ItemResult) -> str:
    if not item.citations:
        return "<h4>Retrieved passages</h4><p class='empty'>None.</p>"
    rows = []
    for c in item.citations:
        matched = _matches(item.expected_sources, c)
        source = _e(c.get("source") or "—")
        if c.get("anchor"):
            source += f"<span class='muted'>#{_e(c['anchor'])}</span>"
        if c.get("page") is not None:
            source += f" <span class='muted'>p.&nbsp;{_e(c['page'])}</span>"
        score = c.get("score")
        text = str(c.get("text") or "")
        words = len(text.split())
        passage = (
            f"<details><summary>{words} word{'s' * (words != 1)}</summary><div class='passage'>{_e(text)}</div></details>"
            if text
            else "<span class='muted'>—</span>"
        )
        rows.append(
            f"<tr class='{'match' if matched else 'other'}'>"
            f"<td class='num'>[{_e(c.get('n', '?'))}]</td><td class='source mono'>{source}</td>"
            f"<td>{_e(c.get('heading') or '')}</td>"
            f"<td class='num'>{_e(f'{score:.3f}' if isinstance(score, (int, float)) else '—')}</td>"
            f"<td>{'yes' if c.get('cited') else '<span class=muted>no</span>'}</td>"
            f"<td>{_EXPECTED_BADGE if matched else ''}</td>"
            f"<td>{passage}</td></tr>"
        )
    return (
        "<h4>Retrieved passages</h4><table class='citations'><colgroup><col class='c-n'><col class='c-source'>"
        "<col class='c-heading'><col class='c-score'><col class='c-cited'><col class='c-expected'><col></colgroup>"
        "<thead><tr><th class='num'>n</th><th>Source</th><th>Heading</th><th class='num'>Score</th>"
        "<th title='the answer refers to this passage'>Cited</th><th>Expected</th><th>Passage</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_ABSTAINED_BADGE = '<span class="badge abstained" title="the answer says the documents do not have it">abstained</span>'


def _sentence(sentence: dict[str, Any]) -> tuple[str, str, list[int]]:
    """A sentence's CSS class, its title (support and passages) and the passages it cites."""
    cites = [int(n) for n in sentence.get("citations") or []]
    support = sentence.get("support")
    shown = f"support {support:.2f}" if isinstance(support, (int, float)) else "support —"
    if cites:
        return "supported", f"{shown} · cites {', '.join(f'[{n}]' for n in cites)}", cites
    return "unsupported", f"{shown} · no passage supports it", cites


def _marked_answer(item: ItemResult) -> str:
    """The answer exactly as stored, each attributed sentence marked supported or unsupported; passage
    numbers the text does not show already (answers scored with `eval score`) follow their sentence."""
    text, out, at = item.prediction, [], 0
    for sentence in item.sentences:
        piece = str(sentence.get("text") or "")
        start = text.find(piece, at) if piece else -1
        if start < 0:
            continue
        end = start + len(piece)
        kind, title, cites = _sentence(sentence)
        out.append(f'{_e(text[at:start])}<span class="sentence {kind}" title="{_e(title)}">{_e(piece)}</span>')
        if cites and not cited_numbers(piece) and not text[end:].lstrip().startswith("["):
            out.append(f'<sup class="marks">{_e("".join(f"[{n}]" for n in cites))}</sup>')
        at = end
    return "".join(out) + _e(text[at:])


def _prediction(item: ItemResult) -> str:
    badge = f" {_ABSTAINED_BADGE}" if item.abstained else ""
    legend = ""
    if item.sentences:
        supported = sum(1 for s in item.sentences if s.get("citations"))
        legend = (
            f"<p class='legend muted'>{supported} of {len(item.sentences)} sentence{'s' * (len(item.sentences) != 1)} "
            "supported by a passage (<span class='sentence supported'>supported</span>, "
            "<span class='sentence unsupported'>unsupported</span>).</p>"
        )
    return f'<div><h4>Prediction{badge}</h4><div class="text prediction">{_marked_answer(item)}</div>{legend}</div>'


_VERDICTS = {
    True: '<span class="badge match">supported</span>',
    False: '<span class="badge missing">not supported</span>',
    None: '<span class="badge unparsed" title="the judge\'s reply could not be read">unreadable</span>',
}


def _judgement(item: ItemResult) -> str:
    """The LLM judge's claims and verdicts, or why there are none."""
    judge = item.judge
    if not judge:
        return ""
    head = f"<h4>Judge claims <span class='muted'>({_e(judge.get('model') or '—')})</span></h4>"
    if judge.get("error"):
        return head + f"<pre class='error'>{_e(judge['error'])}</pre>"
    claims = judge.get("claims") or []
    if not claims:
        why = "The judge's list of claims could not be read." if judge.get("unparsed") else "The judge found no claim."
        return head + f"<p class='empty'>{why}</p>"
    rows = "".join(f"<li>{_VERDICTS[c.get('supported')]} {_e(c.get('claim', ''))}</li>" for c in claims)
    return head + f"<ul class='claims'>{rows}</ul>"


def _item(rank: int, item: ItemResult, by: str) -> str:
    return (
        f'<article class="item" id="item-{item.position}" data-item-id="{_e(item.item_id)}">'
        f'<header><span class="rank">#{rank}</span><h3>{_e(item.item_id)}</h3>'
        f'<span class="muted">line {item.position}</span>{f" {_ABSTAINED_BADGE}" if item.abstained else ""}'
        f'<span class="score">{_e(by)} {_e(format_metric(by, item.metrics.get(by)))}</span></header>'
        f'<p class="question">{_e(shown_question(item.question))}</p>'
        f'<div class="answers">{_prediction(item)}'
        f'<div><h4>Reference</h4><div class="text reference">{_e(item.reference)}</div></div></div>'
        f"<h4>Scores</h4>{_chips(item, by)}"
        f"{_judgement(item)}{_expected_sources(item)}{_citations(item)}</article>"
    )


def _worst_section(run: RunResult, worst: int) -> str:
    by = rank_metric(run.items)
    head = '<section id="worst"><h2>Worst items</h2>'
    if not run.scored:
        return head + '<p class="empty">No scored items.</p></section>'
    if by is None:
        return head + '<p class="empty">No per-item score to rank by.</p></section>'
    if worst <= 0:
        return head + '<p class="empty">Not shown (worst = 0).</p></section>'
    items = worst_items(run, worst, by)
    direction = "highest" if by in LOWER_IS_BETTER else "lowest"
    lead = (
        f"<p class='muted'>The {len(items)} scored item{'s' * (len(items) != 1)} with the {direction} "
        f"<code>{_e(by)}</code>, worst first. Passages from an expected source are marked "
        f"{_EXPECTED_BADGE}.</p>"
    )
    return head + lead + "".join(_item(r, i, by) for r, i in enumerate(items, start=1)) + "</section>"


def _not_scored(run: RunResult) -> str:
    errors = [i for i in run.items if i.error is not None]
    parts = ['<section id="not-scored"><h2>Errors &amp; dataset problems</h2>']
    if errors:
        rows = "".join(
            f"<tr><td class='num'>{i.position}</td><td class='mono'>{_e(i.item_id)}</td><td>{_e(shown_question(i.question))}</td>"
            f"<td><pre class='error'>{_e(i.error)}</pre></td></tr>"
            for i in errors
        )
        parts.append(
            f"<h3 id='errors'>Items with errors ({len(errors)})</h3><table class='errors'><thead><tr>"
            "<th class='num narrow'>Line</th><th>Id</th><th>Question</th><th>Error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    else:
        parts.append("<h3 id='errors'>Items with errors</h3><p class='empty'>None.</p>")
    judged = [i for i in run.items if i.judge and i.judge.get("error")]
    if judged:
        rows = "".join(
            f"<tr><td class='num'>{i.position}</td><td class='mono'>{_e(i.item_id)}</td>"
            f"<td><pre class='error'>{_e(i.judge['error'] if i.judge else '')}</pre></td></tr>"
            for i in judged
        )
        parts.append(
            f"<h3 id='judge-errors' style='margin-top:18px'>Items the judge failed on ({len(judged)})</h3>"
            "<p class='muted'>Scored, but without <code>faithfulness</code>.</p><table class='judge-errors'><thead><tr>"
            "<th class='num narrow'>Line</th><th>Id</th><th>Error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    if run.problems:
        rows = "".join(f"<tr><td class='num'>{p.line}</td><td>{_e(p.reason)}</td></tr>" for p in run.problems)
        parts.append(
            f"<h3 id='problems' style='margin-top:18px'>Dataset lines not evaluated ({len(run.problems)})</h3>"
            "<table class='problems'><thead><tr><th class='num narrow'>Line</th><th>Reason</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    else:
        parts.append("<h3 id='problems' style='margin-top:18px'>Dataset problems</h3><p class='empty'>None.</p>")
    return "".join(parts) + "</section>"


def _config(run: RunResult) -> str:
    text = json.dumps(run.config, indent=2, ensure_ascii=False, default=str)
    return f'<section id="config"><h2>Config snapshot</h2><pre class="config">{_e(text)}</pre></section>'


def render_report(run: RunResult, worst: int = 10) -> str:
    """A self-contained HTML page (no external URLs, scripts or fonts; works from file:// offline)."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="ragapp ragapp.evals.report">'
        '<link rel="icon" href="data:,">'  # or the browser asks file:// for /favicon.ico
        f"<title>{_e(run.name)} · evaluation report</title><style>{_CSS}</style></head>\n<body><main>"
        + _header(run)
        + _summary(run)
        + _plots_section(run)
        + _worst_section(run, worst)
        + _not_scored(run)
        + _config(run)
        + "</main></body></html>\n"
    )


def write_report(run: RunResult, path: str | Path, worst: int = 10) -> Path:
    """Render and write the report; the file is replaced whole, so a reader never sees half a page."""
    path = Path(path)
    page = render_report(run, worst=worst)  # before touching the disk: a failure leaves nothing behind
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open applies the umask to 0o666, as a plain open() of `path` would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
