"""Ranking metrics over graded relevance judgements, with trec_eval's conventions, and TREC files.

A run is {query id: {doc id: score}} and qrels are {query id: {doc id: relevance}}, the shapes
pytrec_eval takes. Documents are ranked as trec_eval ranks them (score descending, ties by doc id
descending), so the numbers equal trec_eval's on the same run file; tests check that against
pytrec_eval. Only queries with at least one relevant judgement (relevance >= 1) are scored; a query
judged but absent from the run scores 0 (trec_eval -c), and run queries without judgements are ignored.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
_METRIC = re.compile(r"^(ndcg|recall|mrr)@([1-9][0-9]*)$")


def trec_order(scores: Mapping[str, float]) -> list[str]:
    """Doc ids best first, as trec_eval sorts them: by score, then by doc id, both descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def parse_metric(name: str) -> tuple[str, int]:
    match = _METRIC.match(name)
    if not match:
        raise ValueError(f"unknown metric {name!r}: use ndcg@K, recall@K or mrr@K")
    return match.group(1), int(match.group(2))


def ndcg(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    """Linear gains (gain = relevance level, as trec_eval's ndcg_cut), log2(rank + 1) discount."""
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal_gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k]
    ideal = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal_gains))
    return dcg / ideal if ideal > 0 else 0.0


def recall(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {doc for doc, rel in judged.items() if rel >= 1}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    for rank, doc in enumerate(ranking[:k], start=1):
        if judged.get(doc, 0) >= 1:
            return 1.0 / rank
    return 0.0


_FUNCTIONS = {"ndcg": ndcg, "recall": recall, "mrr": mrr}


def per_query(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """{query id: {metric: value}} for every judged query with at least one relevant document."""
    parsed = [(name, *parse_metric(name)) for name in metrics]
    out: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not any(rel >= 1 for rel in judged.values()):
            continue
        ranking = trec_order(run.get(qid, {}))
        out[qid] = {name: _FUNCTIONS[kind](ranking, judged, k) for name, kind, k in parsed}
    return out


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Each metric's mean over the scored queries (see `per_query`)."""
    metrics = list(metrics)
    values = per_query(run, qrels, metrics)
    if not values:
        return {name: 0.0 for name in metrics}
    return {name: sum(v[name] for v in values.values()) / len(values) for name in metrics}


# -- files ----------------------------------------------------------------------------------------


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR's qrels TSV (`query-id, corpus-id, score`, with a header) or TREC's (`qid 0 docid rel`)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [x.strip() for x in fields]
            if not any(fields):
                continue
            if number == 1 and fields[0] == "query-id":
                continue
            if len(fields) == 4:  # TREC: qid iteration docid relevance
                fields = [fields[0], fields[2], fields[3]]
            if len(fields) != 3:
                raise ValueError(f"{path}:{number}: expected query-id, corpus-id and score")
            try:
                relevance = int(float(fields[2]))
            except ValueError:
                raise ValueError(f"{path}:{number}: relevance {fields[2]!r} is not a number") from None
            qrels.setdefault(fields[0], {})[fields[1]] = relevance
    return qrels


def write_trec_run(path: Path, run: Run, tag: str) -> None:
    """The 6-column TREC run format (`qid Q0 docid rank score tag`) that trec_eval reads."""
    with open(path, "w", encoding="utf-8") as f:
        for qid in sorted(run):
            f.writelines(
                f"{qid} Q0 {doc} {rank} {run[qid][doc]!r} {tag}\n"
                for rank, doc in enumerate(trec_order(run[qid]), start=1)
            )


def read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(csv.reader(f, delimiter=" ", skipinitialspace=True), start=1):
            if not line:
                continue
            if len(line) != 6:
                raise ValueError(f"{path}:{number}: expected 6 fields (qid Q0 docid rank score tag)")
            run.setdefault(line[0], {})[line[2]] = float(line[4])
    return run
