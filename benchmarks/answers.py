"""Answer quality on real documentation FAQs: repetition, ROUGE-L, groundedness, citations, abstention.

    python benchmarks/answers.py --data ../shared/data --limit 40
    python benchmarks/answers.py --score old-answers.jsonl   # score answers saved by another version

Settings (each question set asked through `App.ask` with the shipped models and default config):
- debian-in: Debian FAQ questions, the FAQ pages in the corpus (/usr/share/doc/debian/FAQ);
- debian-excluded: the same, with each question's own page filtered out (answer from the other pages);
- django-in: Django FAQ questions over the Django documentation (python-django-doc);
- unanswerable: Django FAQ questions asked of the Debian corpus, and Debian FAQ questions asked of the
  Django corpus: the right answer is to abstain.

Every answer is saved (--out) so another version's answers can be scored the same way (`--score`).
Answers without `sentences` (from versions before attribution) are attributed here, with the same
Evidence and thresholds, and their `cited` is what the model wrote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ragapp.evals.metrics import rouge, source_matches

from benchmarks.machine import cpu_name
from ragapp import App
from ragapp.attribution import Evidence, Passage, heading_like, is_echo, split_sentences
from ragapp.generators.base import repeats

DEBIAN = Path("/usr/share/doc/debian/FAQ")
DJANGO = Path("/usr/share/doc/python-django-doc/html")
SETTINGS = ["debian-in", "debian-excluded", "django-in", "unanswerable"]
DJANGO_EXCLUDE = ["_modules/**", "releases/**", "genindex.html", "py-modindex.html", "search.html"]


def workspace(root: Path, name: str, corpus: Path, exclude: list[str]) -> App:
    app = App(root / name)
    if not app.has_store():
        print(f"ingesting {corpus} into {root / name} ...", file=sys.stderr)
        app.ingest([corpus], include=["**/*.html"], exclude=exclude, progress=True)
    return app


def rows(path: Path, limit: int | None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]


def ask_all(app: App, questions: list[dict[str, Any]], setting: str, out: Any) -> None:
    documents = app.documents()
    for i, row in enumerate(questions, 1):
        filters = None
        if setting == "debian-excluded":
            gold = Path(row["source_page"]).resolve()
            filters = {"document": [d["id"] for d in documents if Path(d["source"]).resolve() != gold]}
        mark = time.perf_counter()
        answer = app.ask(row["question"], filters=filters)
        record = answer.to_dict()
        record.update(setting=setting, reference=row["answer"], gold=row["source_page"])
        record["seconds"] = time.perf_counter() - mark
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        print(f"{setting} {i}/{len(questions)} {record['seconds']:.1f}s {answer.answer[:70]!r}", file=sys.stderr)


def repeated(text: str) -> bool:
    """Whether the answer holds a sentence twice, compared as the generators' repeat guard compares them."""
    return repeats(text + "\n")  # the newline closes the last sentence


def echo_start(record: dict[str, Any]) -> bool:
    """Whether the answer opens by repeating the question, a passage label or heading (what a user sees
    first, and learns nothing from)."""
    spans = split_sentences(record["answer"])
    if not spans:
        return False
    first = record["answer"][: spans[0][1]].splitlines()[0]
    echoes = [record["question"], *(c.get("heading") or "" for c in record["citations"])]
    echoes += [line for c in record["citations"] for line in c["text"].splitlines() if heading_like(line)]
    return is_echo(first, echoes)


def attributed(app: App, record: dict[str, Any]) -> tuple[list[dict[str, Any]], set[int]]:
    """(sentences, cited passage numbers): as recorded, or (an older version's answer) attributed now."""
    if "sentences" in record:
        return record["sentences"], {c["n"] for c in record["citations"] if c["cited"]}
    passages = [Passage(c["n"], c["chunk_id"], c["text"]) for c in record["citations"]]
    evidence = Evidence(record["question"], passages, app.embedder.embed_queries)
    sentences = [s.to_dict() for s in evidence.attribute(record["answer"], app.config.answer.min_support)]
    return sentences, {c["n"] for c in record["citations"] if c["cited"]}


def score(app: App, records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_setting[r["setting"]].append(r)
    table = {}
    for setting, items in by_setting.items():
        m: dict[str, list[float]] = defaultdict(list)
        for r in items:
            abstained = bool(r.get("abstained"))
            m["abstained"].append(float(abstained))
            m["seconds"].append(r["seconds"])
            m["attribute_s"].append(r["timings"].get("attribute_s", 0.0))
            if setting == "unanswerable":
                continue
            m["repeated"].append(float(repeated(r["answer"])))
            m["echo_start"].append(float(echo_start(r)))
            m["rougeL"].append(rouge(r["answer"], r["reference"])["rougeL"])
            sentences, cited = attributed(app, r)
            if not abstained and sentences:
                m["groundedness"].append(sum(bool(s["citations"]) for s in sentences) / len(sentences))
            m["attributed"].append(float(any(s["citations"] for s in sentences)))
            gold = [c["n"] for c in r["citations"] if source_matches(r["gold"], c["source"], None)]
            cited_sources = [c for c in r["citations"] if c["n"] in cited]
            if cited_sources:
                m["citation_precision"].append(
                    sum(source_matches(r["gold"], c["source"], None) for c in cited_sources) / len(cited_sources)
                )
            if gold:
                m["gold_cited"].append(float(any(n in cited for n in gold)))
        table[setting] = {"n": len(items), **{k: statistics.fmean(v) for k, v in m.items() if v}}
        table[setting]["seconds_median"] = statistics.median(m["seconds"])
    return table


def show(table: dict[str, dict[str, float]]) -> None:
    columns = ["n", "repeated", "echo_start", "rougeL", "groundedness", "citation_precision", "gold_cited", "attributed",
               "abstained", "seconds_median", "attribute_s"]  # fmt: skip
    print(f"CPU: {cpu_name()}")
    print("setting".ljust(18) + "".join(c[:11].rjust(12) for c in columns))
    for setting, values in table.items():
        cells = [f"{values[c]:.3f}" if c in values else "-" for c in columns]
        print(setting.ljust(18) + "".join(x.rjust(12) for x in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--limit", type=int, default=None, help="questions per set")
    parser.add_argument("--workspaces", type=Path, default=Path("/tmp/ragapp-bench-answers"))
    parser.add_argument("--out", type=Path, default=Path("answers.jsonl"))
    parser.add_argument("--score", type=Path, nargs="*", help="score saved answers instead of asking")
    parser.add_argument("--settings", nargs="*", choices=SETTINGS, default=SETTINGS, help="which to run")
    args = parser.parse_args()
    if args.score:
        records = [json.loads(line) for path in args.score for line in path.read_text().splitlines() if line]
        show(score(App(args.workspaces / "debian"), records))
        return
    for corpus in (DEBIAN, DJANGO):
        if not corpus.is_dir():
            sys.exit(f"{corpus} missing: apt-get install debian-faq python-django-doc")
    debian = workspace(args.workspaces, "debian", DEBIAN, [])
    django = workspace(args.workspaces, "django", DJANGO, DJANGO_EXCLUDE)
    faq_debian, faq_django = (
        rows(args.data / "faq_debian.jsonl", args.limit),
        rows(args.data / "faq_django.jsonl", args.limit),
    )
    runs = {
        "debian-in": [(debian, faq_debian)],
        "debian-excluded": [(debian, faq_debian)],
        "django-in": [(django, faq_django)],
        "unanswerable": [(debian, faq_django), (django, faq_debian)],
    }
    with args.out.open("w", encoding="utf-8") as out:
        for setting in args.settings:
            for app, questions in runs[setting]:
                ask_all(app, questions, setting, out)
    records = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    show(score(debian, records))


if __name__ == "__main__":
    main()
