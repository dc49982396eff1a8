"""The real end-to-end example: the Debian FAQ (Debian package `debian-faq`) and its question/answer
pairs from ../shared/data/faq_debian.jsonl. Ingest the folder, run part of the dataset through the CLI,
write the report. Skips when either is missing (`make test` installs the package when it can).

`ragapp ingest` runs as a process of its own, so that its stderr shows every warning the pages raise;
`eval run` and `eval report` run in-process (click's runner), reusing the models this process loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragapp.cli import cli
from tests.support import TEST_DATA

pytestmark = pytest.mark.slow

FAQ = Path("/usr/share/doc/debian/FAQ")
DATA = TEST_DATA
QUESTIONS = 4  # each costs about 15 s on one core: a 5-passage prompt, its answer, the reference's perplexity


def ragapp(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragapp", "-w", str(ws), *args], check=False, capture_output=True, text=True, timeout=900
    )


def test_debian_faq_run_and_report(tmp_path: Path) -> None:
    dataset = DATA / "faq_debian.jsonl"
    if not FAQ.is_dir():
        pytest.skip(f"{FAQ} missing: apt-get install debian-faq")
    if not dataset.exists():
        pytest.skip(f"{dataset} missing (set RAGAPP_TEST_DATA to the folder holding faq_debian.jsonl)")
    subset = tmp_path / "faq-subset.jsonl"
    subset.write_text(
        "".join(dataset.read_text(encoding="utf-8").splitlines(keepends=True)[:QUESTIONS]), encoding="utf-8"
    )
    ws = tmp_path / "ws"
    ingest = ragapp(ws, "ingest", str(FAQ))
    assert ingest.returncode == 0, ingest.stderr
    assert "Warning" not in ingest.stderr  # the XHTML pages parse quietly

    run = CliRunner().invoke(
        cli, ["-w", str(ws), "eval", "run", str(subset), "--name", "faq", "-k", "5", "--max-new-tokens", "48", "--json"]
    )
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)
    assert result["status"] == "completed" and len(result["items"]) == QUESTIONS
    agg = result["aggregates"]
    assert {"rougeL", "bleu", "hit@5", "mrr@5", "ndcg@5", "perplexity", "latency_s"} <= agg.keys()
    # The answer's page is in the corpus: dense retrieval finds it for most questions.
    assert agg["hit@5"] >= 0.5, agg
    for item in result["items"]:
        assert item["expected_sources"][0].startswith(str(FAQ))
        hit = any(c["source"] == item["expected_sources"][0] for c in item["citations"])
        assert (item["metrics"]["hit@5"] == 1.0) == hit or len(item["citations"]) < 5

    report = CliRunner().invoke(cli, ["-w", str(ws), "eval", "report", "faq", "--out", str(tmp_path / "faq.html")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "faq.html").read_text(encoding="utf-8")
    assert "What is this FAQ?" in html and "hit@5" in html
