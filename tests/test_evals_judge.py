"""The LLM judge (ragapp.evals.judge): reading lenient replies, counting unreadable ones, retrying and
reporting HTTP failures, and `eval score --judge-url` end to end.

The judge here is a FAKE OpenAI-compatible server on 127.0.0.1 with scripted replies: it tests the
control flow (parsing, counting, retries, errors), not a model's judgement. No real judge is run: the
suite has no session-wide vLLM server to borrow (tests/vllm_server.py starts one per module, ≈35 s or
more), so a real SmolLM2 judge would cost a server start of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ragapp.evals.judge import CLAIMS_PROMPT, Judge, parse_claims, parse_verdict
from ragapp.evals.report import render_report
from ragapp.evals.results import ItemResult
from ragapp.evals.runner import add_judgements
from ragapp.evals.runs import RunStore
from ragapp.evals.summary import aggregate

from ragapp import App
from ragapp.cli import cli
from ragapp.errors import UsageError
from tests.support import IngestedDocs

Reply = Callable[[str], tuple[int, str]]  # the user prompt -> (HTTP status, message content)


@dataclass
class FakeJudge:
    """A FAKE OpenAI-compatible server: GET /v1/models lists one model; POST /v1/chat/completions answers
    with `reply(prompt)`. Every request is recorded."""

    url: str
    reply: Reply
    requests: list[dict[str, Any]] = field(default_factory=list)

    def prompts(self) -> list[str]:
        return [r["body"]["messages"][0]["content"] for r in self.requests if r["path"].endswith("/completions")]


def claims_then_verdicts(claims: str, verdicts: dict[str, str]) -> Reply:
    """The claims step gets `claims`; a verdict step gets the reply listed for the claim it asks about."""

    def reply(prompt: str) -> tuple[int, str]:
        if prompt.startswith("Question:"):
            return 200, claims
        claim = prompt.split("Claim: ", 1)[1].split("\n", 1)[0]
        return 200, verdicts[claim]

    return reply


@pytest.fixture
def fake_judge() -> Iterator[FakeJudge]:
    fake = FakeJudge("", lambda prompt: (200, "[]"))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
            self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            status, content = fake.reply(body["messages"][0]["content"])
            if status != 200:
                self._send(status, {"error": {"message": "the fake judge fails on purpose"}})
                return
            message = {"role": "assistant", "content": content}
            self._send(200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


# -- reading replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "claims"),
    [
        (
            '["Hidden files are skipped.", "Links are not followed."]',
            ["Hidden files are skipped.", "Links are not followed."],
        ),
        ('```json\n["A claim."]\n```', ["A claim."]),
        ('Here are the claims: ["A claim."] I hope this helps.', ["A claim."]),
        ('{"claims": ["A claim."]}', ["A claim."]),
        ('["A claim.", "A claim.", " ", "Another."]', ["A claim.", "Another."]),  # a looping model: once each
        ("[]", []),
        ("The answer claims that hidden files are skipped.", None),
        ("[1, 2]", None),
        ('["A claim cut off by max_tok', None),
        ("", None),
    ],
)
def test_parse_claims(reply: str, claims: list[str] | None) -> None:
    assert parse_claims(reply) == claims


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"verdict": "yes"}', True),
        ('{"verdict":"No"}', False),
        ('```json\n{"verdict": "yes"}\n```', True),
        ('{"verdict": "no"} The passages do not mention it.', False),
        ('{"Verdict": "YES."}', True),
        ('{"verdict": true}', True),
        ("Yes.", True),
        ("no, the passages say otherwise", False),
        ("YES", True),
        ('{"verdict": "perhaps"}', None),
        ("Maybe", None),
        ("The passages say yes", None),  # a yes inside a sentence is not a verdict
        ("", None),
    ],
)
def test_parse_verdict(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


# -- against the FAKE server ---------------------------------------------------------------------

PASSAGES = [(1, "Hidden files and folders are skipped."), (3, "Symbolic links to folders are not followed.")]


def test_model_discovery_temperature_zero_and_api_key(fake_judge: FakeJudge) -> None:
    fake_judge.reply = claims_then_verdicts('["Hidden files are skipped."]', {"Hidden files are skipped.": "yes"})
    with Judge(fake_judge.url, api_key="sk-test") as judge:
        assert judge.model == "fake-judge"  # the first model GET /models lists
        j = judge.judge("Are hidden files skipped?", "Hidden files are skipped. [1]", PASSAGES)
    assert (j.faithfulness, j.unparsed, j.error) == (1.0, 0, None)
    assert [r["path"] for r in fake_judge.requests] == ["/v1/models", "/v1/chat/completions", "/v1/chat/completions"]
    assert all(r["auth"] == "Bearer sk-test" for r in fake_judge.requests)
    posts = [r["body"] for r in fake_judge.requests[1:]]
    assert all(b["temperature"] == 0 and b["model"] == "fake-judge" for b in posts)
    claims_prompt, verdict_prompt = fake_judge.prompts()
    assert claims_prompt == CLAIMS_PROMPT.format(
        question="Are hidden files skipped?", answer="Hidden files are skipped."
    )
    assert "[1] Hidden files and folders are skipped.\n\n[3] Symbolic links" in verdict_prompt


def test_unreadable_verdicts_are_counted_and_left_out(fake_judge: FakeJudge) -> None:
    """A small judge answering garbage for some verdicts: those claims leave the score, and are counted."""
    fake_judge.reply = claims_then_verdicts(
        '["A.", "B.", "C.", "D."]',
        {"A.": '{"verdict": "yes"}', "B.": "No.", "C.": "I think the passages might", "D.": "```\nyes\n```"},
    )
    with Judge(fake_judge.url, model="named") as judge:
        assert judge.model == "named" and fake_judge.requests == []  # a named model needs no discovery
        j = judge.judge("q", "A. B. C. D.", PASSAGES)
    assert [(v.claim, v.supported) for v in j.claims] == [("A.", True), ("B.", False), ("C.", None), ("D.", True)]
    assert j.unparsed == 1 and j.faithfulness == pytest.approx(2 / 3) and j.error is None


def test_unreadable_claims_list_gives_no_score_and_one_unparsed(fake_judge: FakeJudge) -> None:
    fake_judge.reply = lambda prompt: (200, "Sure! The answer makes the following claims: hidden files")
    with Judge(fake_judge.url) as judge:
        j = judge.judge("q", "Hidden files are skipped.", PASSAGES)
    assert (j.claims, j.unparsed, j.faithfulness, j.error) == ([], 1, None, None)
    assert len(fake_judge.prompts()) == 1  # no verdicts asked for claims it could not read
    every_unreadable = claims_then_verdicts('["A."]', {"A.": "hmm"})
    fake_judge.reply = every_unreadable
    with Judge(fake_judge.url) as judge:
        j = judge.judge("q", "A.", PASSAGES)
    assert j.unparsed == 1 and j.faithfulness is None  # never NaN: no verdict, no score


def test_http_500_is_retried_then_reported_not_raised(fake_judge: FakeJudge) -> None:
    fake_judge.reply = lambda prompt: (500, "")
    with Judge(fake_judge.url, retries=2, backoff=0.01) as judge:
        j = judge.judge("q", "Hidden files are skipped.", PASSAGES)
    assert j.faithfulness is None and j.error is not None
    assert "failed after 3 attempts" in j.error and "HTTP 500" in j.error
    assert len(fake_judge.prompts()) == 3

    calls: list[str] = []

    def flaky(prompt: str) -> tuple[int, str]:  # one 503, then well
        calls.append(prompt)
        if len(calls) == 1:
            return 503, ""
        return claims_then_verdicts('["A."]', {"A.": "yes"})(prompt)

    fake_judge.reply = flaky
    with Judge(fake_judge.url, retries=2, backoff=0.01) as judge:
        j = judge.judge("q", "A.", PASSAGES)
    assert (j.faithfulness, j.error, len(calls)) == (1.0, None, 3)


def test_client_errors_are_not_retried_and_a_dead_url_is_a_usage_error(fake_judge: FakeJudge) -> None:
    fake_judge.reply = lambda prompt: (404, "")
    with Judge(fake_judge.url, retries=2, backoff=0.01) as judge:
        j = judge.judge("q", "A.", PASSAGES)
    assert j.error is not None and "HTTP 404" in j.error and len(fake_judge.prompts()) == 1
    with pytest.raises(UsageError, match="--judge-url: cannot list the judge's models"):
        Judge("http://127.0.0.1:9/v1", retries=0)  # the discard port: nothing listens


def _item(position: int, abstained: bool = False, cited: bool = True) -> ItemResult:
    """A HAND-MADE scored item with two passages shown to the generator."""
    citations = [
        {"n": 1, "source": "a.md", "cited": cited, "text": "Hidden files are skipped."},
        {"n": 2, "source": "b.md", "cited": False, "text": "PDF files are read page by page."},
    ]
    sentences = [] if abstained else [{"text": "Hidden files are skipped.", "citations": [1] if cited else []}]
    item = ItemResult(position, f"q{position}", "Are hidden files skipped?", "Yes.", "Hidden files are skipped.")
    item.citations, item.sentences, item.abstained = citations, sentences, abstained
    item.metrics = {"rougeL": 0.5}
    return item


def test_add_judgements_picks_passages_skips_abstentions_and_aggregates_counts(fake_judge: FakeJudge) -> None:
    fake_judge.reply = claims_then_verdicts('["Hidden files are skipped."]', {"Hidden files are skipped.": "yes"})
    items = [_item(1), _item(2, cited=False), _item(3, abstained=True)]
    with Judge(fake_judge.url) as judge:
        add_judgements(judge, items)
    first, second = (p for p in fake_judge.prompts() if p.startswith("Passages:"))
    assert "[1] Hidden" in first and "[2] PDF" not in first  # the cited passage only
    assert "[1] Hidden" in second and "[2] PDF" in second  # nothing cited: every passage shown
    assert [i.metrics["faithfulness"] for i in items] == [1.0, 1.0, None]
    assert items[2].judge is None and items[2].metrics["judge_unparsed"] is None  # abstained: not judged

    fake_judge.reply = lambda prompt: (500, "")
    failed = [_item(4)]
    with Judge(fake_judge.url, retries=0) as judge:
        add_judgements(judge, failed)
    assert failed[0].error is None and failed[0].metrics["rougeL"] == 0.5  # still scored, only not judged
    assert failed[0].judge is not None and "HTTP 500" in failed[0].judge["error"]
    fake_judge.reply = lambda prompt: (200, "no idea")
    unread = [_item(5)]
    with Judge(fake_judge.url) as judge:
        add_judgements(judge, unread)
    a = aggregate(items + failed + unread)
    assert a["faithfulness"] == 1.0 and a["judge_unparsed"] == 1.0 and a["judge_errors"] == 1.0
    assert not {"faithfulness", "judge_unparsed", "judge_errors"} & set(aggregate([_item(6)]))  # not judged


def test_eval_score_with_a_judge_end_to_end(fake_judge: FakeJudge, ingested_docs: IngestedDocs, tmp_path: Path) -> None:
    """`eval score --judge-url` on a real workspace (real retrieval and attribution), FAKE judge; one row
    gets garbage verdicts, one a judge failure: counted, reported, the run completes."""
    ws = ingested_docs.folder
    rows = [
        ("hidden", "Does ragapp ingest skip hidden files?", "Hidden files and hidden folders are skipped by ingest."),
        ("pdf", "Can ragapp read PDF files?", "Yes, ragapp reads PDF files and cites page numbers."),
        ("stop", "What does the --stop option do?", "The --stop option ends the answer at the given text."),
    ]
    data = tmp_path / "preds.jsonl"
    data.write_text(
        "".join(json.dumps({"id": i, "question": q, "prediction": p, "reference": p}) + "\n" for i, q, p in rows)
    )

    def reply(prompt: str) -> tuple[int, str]:
        if "--stop" in prompt:
            return 500, ""
        if prompt.startswith("Question:"):
            return 200, json.dumps([prompt.split("Answer: ", 1)[1].split("\n", 1)[0]])
        return 200, "garbage" if "PDF" in prompt.split("Claim: ", 1)[1] else '{"verdict": "yes"}'

    fake_judge.reply = reply
    result = CliRunner().invoke(
        cli, ["-w", str(ws), "eval", "score", str(data), "--name", "judged", "--judge-url", fake_judge.url]
    )
    assert result.exit_code == 0, result.output
    assert "item stop (line 3) has no faithfulness:" in result.stderr and "HTTP 500" in result.stderr
    run = RunStore(App(ws).open_store()).load("judged")
    assert run.status == "completed" and run.models["judge"] == "fake-judge"
    by_id = {i.item_id: i for i in run.items}
    assert by_id["hidden"].metrics["faithfulness"] == 1.0 and by_id["hidden"].metrics["judge_unparsed"] == 0
    assert by_id["pdf"].metrics["faithfulness"] is None and by_id["pdf"].metrics["judge_unparsed"] == 1
    assert by_id["stop"].metrics["faithfulness"] is None and by_id["stop"].error is None
    a = run.aggregates
    assert a["faithfulness"] == 1.0 and a["judge_unparsed"] == 1 and a["judge_errors"] == 1
    for name in ("judge_unparsed", "judge_errors"):
        assert f"{name}  " in result.stdout  # the summary table shows the counts
    page = render_report(run)
    assert "Items the judge failed on (1)" in page and "unreadable" in page and "fake-judge" in page
    gate = ["-w", str(ws), "eval", "show", "judged", "--fail-under"]
    assert CliRunner().invoke(cli, [*gate, "judge_unparsed=0"]).exit_code == 1  # a ceiling: 1 > 0 fails
    assert CliRunner().invoke(cli, [*gate, "judge_unparsed=1,judge_errors=1"]).exit_code == 0
