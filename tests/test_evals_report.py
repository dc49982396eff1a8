"""HTML evaluation reports: self-contained, escaped, robust to runs without timings or items, and
rendered by a real browser.

All runs here are SYNTHETIC: made-up questions, answers, scores and timings that exercise the
rendering (varied metrics, an error, a dataset problem, hostile text). No model is loaded.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from lxml import html as lxml_html
from ragapp.evals import report
from ragapp.evals.formatting import format_change, format_metric
from ragapp.evals.report import render_report, worst_items, write_report
from ragapp.evals.results import ItemResult, Problem, RunResult
from ragapp.evals.summary import aggregate

from tests.support import CHROMIUM, CHROMIUM_ARGS

HOSTILE = 'Is <script>alert(1)</script> & "quoted" text safe?'


def _citations(rng: random.Random, expected: str, found: bool) -> list[dict[str, Any]]:
    names = ["asking.md", "ingesting.md", "config.md", "evaluating.md", "cli.md"]
    out = []
    for n in range(1, 5):
        source = f"docs/{expected}" if found and n == 2 else f"docs/{rng.choice([x for x in names if x != expected])}"
        out.append(
            {
                "n": n,
                "source": source,
                "page": None,
                "anchor": rng.choice([None, "options", "stop-strings"]),
                "heading": f"Section {n} <b>bold?</b>",
                "chunk_id": rng.randrange(1000),
                "score": round(0.9 - 0.1 * n + rng.random() / 20, 4),
                "cited": n <= 2,
                "text": f"Passage {n} about {source}. " + "Lorem ipsum dolor sit amet. " * rng.randrange(3, 30),
            }
        )
    return out


def synthetic_run(n: int = 30, kind: str = "pipeline", seed: int = 7) -> RunResult:
    """A SYNTHETIC run of `n` items; item 3 asks the hostile question and scores worst, item 5 failed."""
    rng = random.Random(seed)
    items: list[ItemResult] = []
    for pos in range(1, n + 1):
        expected = rng.choice(["asking.md", "ingesting.md", "config.md"])
        question = HOSTILE if pos == 3 else f"Synthetic question {pos}: how does feature {pos} work?"
        item = ItemResult(
            position=pos,
            item_id=f"q{pos:02d}",
            question=question,
            reference=f"Feature {pos} works by doing the documented thing & more.",
            prediction=f"It works like this, item {pos}.\nSecond line <i>not italic</i>.",
            expected_sources=[expected] if kind == "pipeline" else [],
        )
        if pos == 5:
            item.error = "generation failed: <RuntimeError> out of memory & more"
            item.prediction = ""
            items.append(item)
            continue
        f1 = 0.01 if pos == 3 else rng.uniform(0.05, 0.95)
        metrics: dict[str, float | None] = {}
        for kind_ in ("1", "2", "L"):
            scale = {"1": 1.0, "2": 0.6, "L": 0.9}[kind_]
            metrics[f"rouge{kind_}"] = f1 * scale
            metrics[f"rouge{kind_}_p"] = min(1.0, f1 * scale * 1.1)
            metrics[f"rouge{kind_}_r"] = f1 * scale * 0.9
        metrics["bleu"] = f1 * 0.6
        if kind == "pipeline":
            found = rng.random() < 0.7
            metrics.update(
                {"hit@5": float(found), "recall@5": float(found), "mrr@5": found / 2, "ndcg@5": found * 0.63}
            )
            metrics["perplexity"] = rng.uniform(5, 40)
            item.citations = _citations(rng, expected, found)
            latency = rng.uniform(0.3, 4.0)
            item.timings = {
                "retrieve_s": latency * 0.1,
                "generate_s": latency * 0.9,
                "latency_s": latency,
                "prompt_tokens": float(rng.randrange(200, 900)),
                "completion_tokens": float(rng.randrange(10, 120)),
                "reference_tokens": float(rng.randrange(8, 40)),
            }
        item.metrics = metrics
        items.append(item)
    aggregates = aggregate(items) if n else {}
    return RunResult(
        id=12,
        name=f"synthetic-{kind} <b>&</b>",
        kind=kind,
        status="completed",
        dataset="/data/synthetic <questions>.jsonl",
        started_at=datetime(2025, 3, 1, 9, 30, 0, tzinfo=UTC),
        finished_at=datetime(2025, 3, 1, 9, 34, 5, tzinfo=UTC),
        seconds=245.3,
        config={
            "retrieval": {"k": 5},
            "generation": {"max_new_tokens": 128, "stop": ["</s>"]},
            "prompt": "Use <ctx> & cite",
        },
        models={"embedding": "all-MiniLM-L6-v2", "generator": "SmolLM2-135M-Instruct"} if kind == "pipeline" else {},
        aggregates=aggregates,
        problems=[Problem(line=31, reason="invalid JSON: expected '}' <near> & here")] if n else [],
        items=items,
        total=n,
        saved=n,
    )


def grounded_run() -> RunResult:
    """SYNTHETIC: `synthetic_run()` with attribution and an LLM judge's work made up on top. Each answer's
    first sentence is supported by passage 1, its second by none; q03 abstained; the judge failed on q04
    and could not read one verdict on q06."""
    run = synthetic_run()
    rng = random.Random(3)
    for item in run.scored:
        first, second = item.prediction.split("\n")
        item.sentences = [
            {"text": first, "citations": [1], "support": 0.81, "quote": {"chunk_id": 1, "start": 0, "end": 9}},
            {"text": second, "citations": [], "support": 0.22, "quote": None},
        ]
        item.metrics.update(
            groundedness=0.5,
            citation_precision=rng.choice([0.0, 0.5, 1.0]),
            citation_recall=rng.choice([0.0, 1.0]),
            answer_relevance=rng.uniform(0.2, 0.9),
            abstention_rate=0.0,
            faithfulness=1.0,
            judge_unparsed=0,
        )
        item.judge = {
            "model": "judge-7b",
            "claims": [{"claim": first, "supported": True}],
            "unparsed": 0,
            "error": None,
        }
        if item.item_id == "q03":
            item.prediction, item.sentences, item.abstained, item.judge = "I could not find this.", [], True, None
            item.metrics.update(groundedness=None, answer_relevance=None, abstention_rate=1.0)
            item.metrics.update(faithfulness=None, judge_unparsed=None)
        if item.item_id == "q04":
            item.judge = {"model": "judge-7b", "claims": [], "unparsed": 0, "error": "HTTP 500 <boom> & more"}
            item.metrics.update(faithfulness=None, judge_unparsed=None)
        if item.item_id == "q06":
            item.judge["claims"] = [
                {"claim": "Supported <claim>.", "supported": True},
                {"claim": "Unsupported claim.", "supported": False},
                {"claim": "Claim with an unreadable verdict.", "supported": None},
            ]
            item.judge["unparsed"] = 1
            item.metrics.update(faithfulness=0.5, judge_unparsed=1)
    run.aggregates = aggregate(run.items)
    return run


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Balance(HTMLParser):
    """Every element the report opens it closes, in order: the page does not lean on error recovery."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def _doc(page: str) -> Any:
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    return lxml_html.document_fromstring(page, parser=lxml_html.HTMLParser(recover=False))


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests about something else: drawing the plots is most of a render's second."""
    monkeypatch.setattr(report, "plots", lambda run: [])


@pytest.fixture(scope="module")
def pipeline_page() -> str:
    return render_report(synthetic_run())


def _plot_keys(doc: Any) -> list[str]:
    return [f.get("data-plot") for f in doc.xpath("//figure[@data-plot]")]


def test_page_is_self_contained_and_parses(pipeline_page: str) -> None:
    page = pipeline_page
    doc = _doc(page)  # strict: unbalanced or malformed markup fails
    assert doc.xpath("//script") == []
    assert doc.xpath("//link[@rel='stylesheet']") == [] and doc.xpath("//iframe|//object|//embed") == []
    for element in doc.iter():
        for attr in ("src", "href", "srcset", "poster", "data", "action"):
            value = element.get(attr)
            if value is not None:
                assert value.startswith(("data:", "#")), f"<{element.tag} {attr}={value[:60]!r}>"
    styles = " ".join(s.text or "" for s in doc.xpath("//style"))
    assert "@import" not in styles and "url(" not in styles and "@font-face" not in styles
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    images = doc.xpath("//img")
    assert images and all(img.get("src").startswith("data:image/png;base64,") and img.get("alt") for img in images)
    assert all(f.xpath("figcaption") for f in doc.xpath("//figure"))


def test_user_text_is_escaped(pipeline_page: str) -> None:
    page = pipeline_page
    doc = _doc(page)
    assert doc.xpath("//script") == []
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    questions = [q.text_content() for q in doc.xpath("//*[contains(@class,'question')]")]
    assert HOSTILE in questions  # shown as text, in the worst items (it scores lowest)
    # Predictions, headings and the run name carry <i>/<b> as text; the only <b> are the report's own.
    assert doc.xpath("//i") == [] and doc.xpath("//b[not(parent::span[contains(@class, 'chip')])]") == []
    assert "Second line <i>not italic</i>." in doc.text_content()
    assert "<RuntimeError> out of memory & more" in doc.text_content()
    assert "invalid JSON: expected '}' <near> & here" in doc.text_content()
    assert doc.xpath("//title")[0].text_content().startswith("synthetic-pipeline <b>&</b>")
    assert '"prompt": "Use <ctx> & cite"' in doc.xpath("//pre[@class='config']")[0].text_content()


def test_contents_header_summary_worst_errors() -> None:
    run = synthetic_run()
    doc = _doc(render_report(run, worst=7))
    text = doc.text_content()
    for needle in (
        "#12",
        "pipeline",
        "completed",
        "all-MiniLM-L6-v2",
        "SmolLM2-135M-Instruct",
        "2025-03-01 09:30:00",
        "4 min 05 s",
        "29 scored · 1 error · 1 dataset problem",
    ):
        assert needle in text, needle
    summary = {
        row.xpath("td")[0].text_content(): row.xpath("td")[1].text_content()
        for row in doc.xpath("//table[@class='summary']//tr[td]")
    }
    assert set(summary) == set(run.aggregates)
    assert summary["rougeL"] == f"{run.aggregates['rougeL']:.3f}"
    assert summary["latency_s"].endswith(" s") and summary["prompt_tokens"].replace(",", "").isdigit()
    assert list(summary)[:3] == ["rouge1", "rouge1_p", "rouge1_r"]
    assert {"hist-rougeL", "hist-rouge1", "hist-bleu", "retrieval", "latency", "scatter"} <= set(_plot_keys(doc))
    cards = doc.xpath("//section[@id='worst']//article")
    expected = worst_items(run, 7)
    assert [c.get("data-item-id") for c in cards] == [i.item_id for i in expected]
    assert expected[0].item_id == "q03"
    scores = [i.metrics["rougeL"] for i in expected]
    assert scores == sorted(scores)
    # Citations from an expected source are marked, using ragapp.evals.metrics.source_matches semantics.
    for card, item in zip(cards, expected):
        marked = len(card.xpath(".//table[@class='citations']//tr[@class='match']"))
        assert marked == sum(c["source"] == f"docs/{item.expected_sources[0]}" for c in item.citations)
        assert len(card.xpath(".//details/summary")) == len(item.citations)
    assert doc.xpath("//table[@class='errors']//tr[td]")[0].xpath("td")[1].text_content() == "q05"
    assert doc.xpath("//table[@class='problems']//tr[td]")[0].xpath("td")[0].text_content() == "31"


def test_format_metric() -> None:
    assert format_metric("rougeL", 0.41234) == "0.412"
    assert format_metric("bleu", 0.23456) == "0.235"
    assert format_metric("latency_p95_s", 1.2345) == "1.23 s" and format_metric("latency_s", 0.12345) == "0.123 s"
    assert format_metric("prompt_tokens", 1234.6) == "1,235"
    assert format_metric("hit@5", None) == "—" and format_metric("custom", float("nan")) == "—"
    assert format_metric("perplexity", float("inf")) == "∞"
    assert format_change("rougeL", -0.01234) == "-0.012" and format_change("latency_s", 0.5) == "+0.500 s"
    assert format_change("bleu", None) == "—" and format_change("perplexity", 2.5) == "+2.50"


def test_score_run_has_no_latency_or_retrieval_plots() -> None:
    run = synthetic_run(kind="score")
    assert not any(i.timings for i in run.items) and "hit@5" not in run.aggregates
    doc = _doc(render_report(run))
    keys = _plot_keys(doc)
    assert "hist-rougeL" in keys and "hist-bleu" in keys
    assert not {"retrieval", "latency", "scatter"} & set(keys)
    assert len(doc.xpath("//section[@id='worst']//article")) == 10


def test_empty_run_renders() -> None:
    run = synthetic_run(n=0)
    doc = _doc(render_report(run))
    assert doc.xpath("//figure") == [] and doc.xpath("//section[@id='worst']//article") == []
    assert "No scored items." in doc.text_content() and "nothing was scored" in doc.text_content()


@pytest.mark.usefixtures("no_plots")
def test_worst_zero_and_more_than_available() -> None:
    run = synthetic_run(n=6)
    assert len(_doc(render_report(run, worst=0)).xpath("//section[@id='worst']//article")) == 0
    assert len(_doc(render_report(run, worst=50)).xpath("//section[@id='worst']//article")) == 5  # one errored


@pytest.mark.usefixtures("no_plots")
def test_write_report_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "run.html"
    assert write_report(synthetic_run(n=4), out) == out
    first = out.read_text(encoding="utf-8")
    write_report(synthetic_run(n=6), out, worst=2)
    assert out.read_text(encoding="utf-8") != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.html"]  # no temporary file left behind


@pytest.mark.usefixtures("no_plots")
def test_write_report_failure_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run.html"
    out.write_text("old", encoding="utf-8")

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(synthetic_run(n=3), out)
    assert out.read_text(encoding="utf-8") == "old" and [p.name for p in tmp_path.iterdir()] == ["run.html"]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Opened from file:// in the system Chromium: images decode, nothing is fetched, nothing errors."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package `chromium`; `make system-packages`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python package) is not installed")
    from PIL import Image

    worst = 8
    path = write_report(synthetic_run(), tmp_path / "report.html", worst=worst)
    shot = tmp_path / "report.png"
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.getBoundingClientRect().width])"
            )
            assert len(images) >= 6
            assert all(done and natural > 0 and shown > 0 for done, natural, shown in images), images
            assert page.locator("#summary table.summary").is_visible()
            assert page.locator("#worst article.item").count() == worst
            assert page.locator("#worst article.item").first.is_visible()
            assert page.locator("script").count() == 0
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.width >= 1200 and rgb.height > 2000
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 200  # text, plots and badges, not a blank page
        background = max(colours)[0] / (rgb.width * rgb.height)
        assert background < 0.97
    if target := os.environ.get("EVALS_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, target)


def _card(doc: Any, item_id: str) -> Any:
    (card,) = doc.xpath(f"//article[@data-item-id='{item_id}']")
    return card


def test_groundedness_summary_plots_marked_sentences_badges_and_judge() -> None:
    run = grounded_run()
    doc = _doc(render_report(run, worst=40))
    rows = doc.xpath("//table[@class='summary']//tr")
    groups = [r.text_content() for r in rows if r.get("class") == "group"]
    assert groups[:2] == ["Answer quality", "Groundedness"]
    summary = {r.xpath("td")[0].text_content(): r.xpath("td")[1].text_content() for r in rows if r.xpath("td")}
    assert summary["groundedness"] == "0.500" and summary["faithfulness"] == f"{run.aggregates['faithfulness']:.3f}"
    assert summary["judge_unparsed"] == "1" and summary["judge_errors"] == "1"  # counts, not 0..1 scores
    assert summary["abstention_rate"] == f"{1 / 29:.3f}"
    keys = _plot_keys(doc)
    assert {"hist-groundedness", "hist-answer_relevance", "hist-faithfulness", "grounding"} <= set(keys)
    assert "hist-abstention_rate" not in keys and "hist-judge_unparsed" not in keys  # 0/1 and counts: bars
    # Each sentence is marked; the text reads exactly as stored (escaped), the missing [1] mark follows it.
    card = _card(doc, "q01")
    supported = card.xpath(".//span[contains(@class, 'sentence supported')]")
    unsupported = card.xpath(".//span[contains(@class, 'sentence unsupported')]")
    assert supported[0].text_content() == "It works like this, item 1."
    assert unsupported[0].text_content() == "Second line <i>not italic</i>."
    assert "support 0.81 · cites [1]" in supported[0].get("title")
    prediction = card.xpath(".//div[contains(@class, 'prediction')]")[0].text_content()
    assert prediction == "It works like this, item 1.[1]\nSecond line <i>not italic</i>."
    assert "1 of 2 sentences supported" in card.text_content()
    assert doc.xpath("//i") == []
    abstained = _card(doc, "q03")
    assert abstained.xpath(".//span[contains(@class, 'badge abstained')]")
    assert not _card(doc, "q01").xpath(".//span[contains(@class, 'badge abstained')]")
    claims = _card(doc, "q06").xpath(".//ul[@class='claims']/li")
    assert [c.text_content() for c in claims] == [
        "supported Supported <claim>.",
        "not supported Unsupported claim.",
        "unreadable Claim with an unreadable verdict.",
    ]
    assert "HTTP 500 <boom> & more" in _card(doc, "q04").text_content()
    (failed,) = doc.xpath("//table[@class='judge-errors']//tr[td]")
    assert failed.xpath("td")[1].text_content() == "q04"


@pytest.mark.usefixtures("no_plots")
def test_marks_already_in_the_answer_are_not_repeated() -> None:
    """`ask` writes [n] after supported sentences: the report shows them once."""
    run = grounded_run()
    item = next(i for i in run.scored if i.item_id == "q01")
    item.prediction = "It works like this, item 1. [1]\nSecond line <i>not italic</i>."
    doc = _doc(render_report(run, worst=40))
    card = _card(doc, "q01")
    assert card.xpath(".//sup[@class='marks']") == []
    assert card.xpath(".//div[contains(@class, 'prediction')]")[0].text_content() == item.prediction
