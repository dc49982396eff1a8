"""The chat widget of `ragapp serve` (/widget and /widget.js) in a real headless Chromium, against a real
server over ragapp's own docs with the real models: answers stream in, [n] citations and sources open
their passages, an embed on another origin works through CORS, follow-ups continue the conversation.

A mark's quote (hover, focus, click) is shown for a real answer. The last tests replace the server's answers
with made-up ones (Playwright routes) to check how errors, hostile text, the choice of quote per mark, a tap
on a touch screen and an abstained answer are shown; everything else talks to the real server.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Server, docs_workspace, serving
from tests.support import CHROMIUM, CHROMIUM_ARGS, DOCS

# Once, on SQLite: the browser sees the same API on either store (servers on PostgreSQL: test_replicas.py).
pytestmark = pytest.mark.slow

QUESTION = "How do I remove documents whose files were deleted?"
ANSWER_TIMEOUT_MS = 120_000
BLUE = "rgb(37, 99, 235)"

# Records, on every change of the widget's DOM, the last answer's state, text length and whether its
# sources are rendered: the proof that text arrived token by token before the citations did.
WATCH = """() => {
  const root = document.querySelector('[data-testid=ragapp-widget]').shadowRoot;
  window.__samples = [];
  new MutationObserver(() => {
    const a = [...root.querySelectorAll('[data-testid=ragapp-answer]')].pop();
    if (!a) return;
    const text = a.querySelector('[data-testid=ragapp-answer-text]').textContent;
    window.__samples.push([a.dataset.state, text.length, !!a.querySelector('[data-testid=ragapp-sources]')]);
  }).observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


class HostPages(ThreadingHTTPServer):
    """Another origin: serves `pages[path]` as HTML (a site embedding the widget)."""

    pages: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    server: HostPages

    def do_GET(self) -> None:
        page = self.server.pages.get(self.path.split("?")[0])
        body = (page or "not found").encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def host_site() -> Iterator[HostPages]:
    site = HostPages(("127.0.0.1", 0), _Handler)
    site.pages = {}
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.shutdown()
        site.server_close()


def origin(site: HostPages) -> str:
    return f"http://127.0.0.1:{site.server_address[1]}"


@pytest.fixture(scope="module")
def docs() -> Path:
    """ragapp's own documentation (the answers' sources)."""
    return DOCS


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, host_site: HostPages
) -> Iterator[Server]:
    """`ragapp serve` over a workspace of ragapp's docs; short answers; the host site may call it."""
    config = f'[generation]\nmax_new_tokens = 24\n\n[server]\ncors_origins = ["{origin(host_site)}"]\n'
    with serving(docs_workspace(tmp_path_factory, request, config)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package `chromium`; `make system-packages`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python package) is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("console", lambda m: page.problems.append(f"console: {m.text}") if m.type == "error" else None)
    try:
        yield page
    finally:
        context.close()


def ask(page: Any, question: str, *, press_enter: bool = True) -> Any:
    """Types `question`, sends it and waits for its answer to finish; the answer bubble."""
    before = page.get_by_test_id("ragapp-answer").count()
    box = page.get_by_test_id("ragapp-input")
    box.fill(question)
    if press_enter:
        box.press("Enter")
    else:
        page.get_by_test_id("ragapp-send").click()
    answer = page.get_by_test_id("ragapp-answer").nth(before)
    answer.wait_for(state="attached")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=ragapp-widget]').dataset.state !== 'streaming'",
        timeout=ANSWER_TIMEOUT_MS,
    )
    errors = page.get_by_test_id("ragapp-error")
    assert errors.count() == 0, errors.all_text_contents()
    assert answer.get_attribute("data-state") == "done"
    return answer


def stored_turns(server: Server, conversation_id: str) -> list[dict[str, Any]]:
    with server.client() as client:
        response = client.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()["turns"]


def words(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text).strip()


def in_docs(passage: str, docs: Path) -> bool:
    """The passage's longest line is text of one of the doc files."""
    line = max(passage.splitlines(), key=len).strip()
    return len(line) > 20 and any(line in p.read_text(encoding="utf-8") for p in docs.glob("*.md"))


def test_widget_page_streams_an_answer_with_citations(server: Server, docs: Path, page: Any, tmp_path: Path) -> None:
    calls: list[Any] = []
    page.on("response", lambda r: calls.append(r) if r.request.method == "POST" and "/v1/chat/" in r.url else None)
    page.goto(f"{server.url}/widget?collection=default")
    assert page.get_by_test_id("ragapp-widget").get_attribute("data-mode") == "page"
    assert page.get_by_test_id("ragapp-launcher").count() == 0  # full page: no launcher
    page.evaluate(WATCH)
    answer = ask(page, QUESTION)

    # text was shown while the answer streamed, before any source, growing with each piece the server sent
    [response] = calls
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text().splitlines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") for e in events]
    pieces = [p for p in pieces if p]
    assert pieces and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    samples = page.evaluate("window.__samples")
    streaming = {length for state, length, sources in samples if state == "streaming" and length > 0 and not sources}
    assert len(streaming) >= min(2, len(pieces)), (pieces, samples)
    assert page.get_by_test_id("ragapp-send").is_enabled()

    conversation_id = page.get_by_test_id("ragapp-widget").get_attribute("data-conversation-id")
    assert conversation_id
    [turn] = stored_turns(server, conversation_id)
    assert turn["question"] == QUESTION
    shown = answer.get_by_test_id("ragapp-answer-text").text_content()
    assert words(shown) == words(turn["answer"])  # `code` and [1, 2] are shown as code and [1][2]
    citations = {c["n"]: c for c in turn["citations"]}
    assert citations

    sources = answer.get_by_test_id("ragapp-source")
    assert sources.count() == len(citations)
    for i in range(sources.count()):
        item = sources.nth(i)
        c = citations[int(item.get_attribute("data-n"))]
        assert item.get_attribute("data-cited") == str(c["cited"]).lower()
        assert Path(c["source"]).name in item.text_content()
        assert item.get_by_test_id("ragapp-passage").is_hidden()
    marks = answer.get_by_test_id("ragapp-cite")
    assert {int(m.get_attribute("data-n")) for m in marks.all()} <= set(citations)

    # open one: an [n] in the answer if the model wrote one, else a source of the list
    opener = marks.first if marks.count() else answer.get_by_test_id("ragapp-source-toggle").first
    n = int(opener.get_attribute("data-n"))
    opener.click()
    passage = answer.locator(f"[data-testid=ragapp-passage][data-n='{n}']")
    passage.wait_for(state="visible")
    assert passage.text_content() == citations[n]["text"]
    assert in_docs(passage.text_content(), docs)
    assert answer.get_by_test_id("ragapp-passage").filter(visible=True).count() == 1
    # another source replaces it
    other = next(k for k in citations if k != n) if len(citations) > 1 else None
    if other is not None:
        answer.locator(f"[data-testid=ragapp-source-toggle][data-n='{other}']").click()
        assert answer.locator(f"[data-testid=ragapp-passage][data-n='{other}']").is_visible()
        assert passage.is_hidden()

    shot = tmp_path / "widget.png"
    page.screenshot(path=str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert page.problems == []


def test_widget_embeds_on_another_origin(
    server: Server, docs: Path, host_site: HostPages, page: Any, tmp_path: Path
) -> None:
    host_site.pages["/embed.html"] = f"""<!doctype html><html><head><title>Some site</title>
<link rel="icon" href="data:,">
<style>div {{ color: red; font-size: 30px }} button {{ background: red; border-radius: 0 }}
.panel, .send, .launcher {{ display: none }}</style></head>
<body><h1>A site that embeds the chat</h1><div class="panel">the site's own .panel</div>
<script src="{server.url}/widget.js" data-collection="default" data-title="Docs help"></script>
</body></html>"""
    calls: list[Any] = []
    page.on("response", lambda r: calls.append(r) if r.request.method == "POST" and "/v1/chat/" in r.url else None)
    page.goto(f"{origin(host_site)}/embed.html")

    widget = page.get_by_test_id("ragapp-widget")
    assert widget.get_attribute("data-mode") == "float"
    panel = page.get_by_test_id("ragapp-panel")
    launcher = page.get_by_test_id("ragapp-launcher")
    assert panel.is_hidden() and launcher.is_visible()
    # the site's CSS does not reach into the widget
    assert launcher.evaluate("b => getComputedStyle(b).backgroundColor") == BLUE
    assert page.locator("div.panel").first.is_hidden()  # ... which hides the site's own .panel only
    launcher.click()
    panel.wait_for(state="visible")
    assert launcher.get_attribute("aria-expanded") == "true"
    assert "Docs help" in panel.text_content()
    send = page.get_by_test_id("ragapp-send")
    assert send.evaluate("b => getComputedStyle(b).backgroundColor") == BLUE

    box = page.get_by_test_id("ragapp-input")
    box.fill(QUESTION)
    send.click()
    assert send.is_disabled()  # while the answer streams
    page.wait_for_function(
        "() => document.querySelector('[data-testid=ragapp-widget]').dataset.state !== 'streaming'",
        timeout=ANSWER_TIMEOUT_MS,
    )
    assert page.get_by_test_id("ragapp-error").count() == 0, page.get_by_test_id("ragapp-error").all_text_contents()
    answer = page.get_by_test_id("ragapp-answer").first
    assert answer.get_attribute("data-state") == "done"
    assert answer.get_by_test_id("ragapp-answer-text").text_content().strip()
    assert answer.get_by_test_id("ragapp-source").count() >= 1
    assert answer.evaluate("a => getComputedStyle(a).color") != "rgb(255, 0, 0)"
    answer.get_by_test_id("ragapp-source-toggle").first.click()
    assert in_docs(answer.get_by_test_id("ragapp-passage").first.text_content(), docs)
    assert send.is_enabled()

    page.screenshot(path=str(tmp_path / "embed.png"))
    assert (tmp_path / "embed.png").read_bytes().startswith(b"\x89PNG")

    [response] = calls
    assert response.status == 200
    assert response.request.all_headers().get("origin") == origin(host_site)
    assert response.all_headers().get("access-control-allow-origin") == origin(host_site)
    page.get_by_test_id("ragapp-close").click()
    assert panel.is_hidden()
    assert page.problems == []

    # an origin the server does not list gets no CORS grant: the browser refuses the answer
    with server.client() as client:
        refused = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "http://elsewhere.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    assert "access-control-allow-origin" not in refused.headers


MARK = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def first_mark(final: dict[str, Any]) -> tuple[int, int]:
    """(n, offset in the answer) of the first [n] mark that names a citation of the final event."""
    known = {c["n"] for c in final["citations"]}
    for m in MARK.finditer(final["answer"]):
        numbers = [int(x) for x in re.split(r"\s*[,;]\s*", m.group(1))]
        if all(n in known for n in numbers):
            return numbers[0], m.start()
    raise AssertionError(f"no [n] mark in {final['answer']!r}")


def quote_of(final: dict[str, Any], n: int, at: int) -> tuple[str, str]:
    """(kind, text) the popover of mark [n] at offset `at` must show: the quote of the sentence it is in
    (the last one starting before it) when that quote is from passage n, else the start of passage n."""
    citation = next(c for c in final["citations"] if c["n"] == n)
    starts, start = [], 0
    for sentence in final["sentences"]:
        start = final["answer"].index(sentence["text"], start)
        starts.append(start)
    before = [i for i, s in enumerate(starts) if s <= at]
    quote = final["sentences"][before[-1]]["quote"] if before else None
    if quote and quote["chunk_id"] == citation["chunk_id"]:
        return "quote", citation["text"][quote["start"] : quote["end"]]
    return "passage", citation["text"].strip()[:60]


def test_a_mark_shows_its_supporting_quote(server: Server, page: Any) -> None:
    """Hover, keyboard focus and click on the first [n] of a real answer show the quote the final event gives
    for it, with the source's name; leaving, Escape and a second click close it."""
    calls: list[Any] = []
    page.on("response", lambda r: calls.append(r) if r.request.method == "POST" and "/v1/chat/" in r.url else None)
    page.goto(f"{server.url}/widget?collection=default")
    answer = ask(page, QUESTION)
    events = [json.loads(line[6:]) for line in calls[0].text().splitlines() if line.startswith("data: {")]
    final = events[-1]
    assert final["abstained"] is False and final["sentences"], final
    assert words(answer.get_by_test_id("ragapp-answer-text").text_content()) == words(final["answer"])  # the final text
    n, at = first_mark(final)
    kind, quoted = quote_of(final, n, at)
    citation = next(c for c in final["citations"] if c["n"] == n)
    mark = answer.get_by_test_id("ragapp-cite").first
    assert int(mark.get_attribute("data-n")) == n
    pop = page.get_by_test_id("ragapp-quote")
    assert pop.is_hidden()

    mark.hover()
    pop.wait_for(state="visible")
    assert quoted in pop.get_by_test_id("ragapp-quote-text").text_content()
    assert pop.get_attribute("data-kind") == kind and pop.get_attribute("data-n") == str(n)
    assert Path(citation["source"]).name in pop.get_by_test_id("ragapp-quote-source").text_content()
    assert mark.get_attribute("aria-describedby") == pop.get_attribute("id")
    box, spot = pop.bounding_box(), page.get_by_test_id("ragapp-panel").bounding_box()
    assert spot["x"] <= box["x"] and box["x"] + box["width"] <= spot["x"] + spot["width"]  # inside the panel
    page.mouse.move(1, 1)
    pop.wait_for(state="hidden")

    mark.focus()  # as Tab would
    pop.wait_for(state="visible")
    assert quoted in pop.text_content()
    page.keyboard.press("Escape")
    pop.wait_for(state="hidden")

    mark.click()  # pins it, and opens the passage as before
    pop.wait_for(state="visible")
    assert answer.locator(f"[data-testid=ragapp-passage][data-n='{n}']").is_visible()
    page.mouse.move(1, 1)
    page.wait_for_timeout(400)
    assert pop.is_visible()  # a clicked quote stays after the pointer leaves
    mark.click()
    pop.wait_for(state="hidden")
    assert page.problems == []


def test_follow_up_continues_the_conversation(server: Server, page: Any) -> None:
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(f"{server.url}/widget")
    ask(page, QUESTION)
    widget = page.get_by_test_id("ragapp-widget")
    first_id = widget.get_attribute("data-conversation-id")
    assert first_id
    ask(page, "And what does --sync do with other folders?", press_enter=False)
    assert widget.get_attribute("data-conversation-id") == first_id

    assert [body.get("conversation_id") for body in sent] == [None, first_id]
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert sent[1]["messages"][0]["content"] == QUESTION and sent[1]["stream"] is True
    assert sent[1]["model"] == "default"
    turns = stored_turns(server, first_id)
    assert [t["question"] for t in turns] == [QUESTION, "And what does --sync do with other folders?"]
    assert page.get_by_test_id("ragapp-answer").count() == 2
    assert page.problems == []


def _sse(*chunks: dict[str, Any] | str) -> str:
    return "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)


def test_errors_and_hostile_text_are_shown_as_text(server: Server, page: Any) -> None:
    """Made-up server answers (Playwright routes): errors, an in-stream error, and HTML in every field."""
    hostile = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    replies: list[dict[str, Any]] = [
        {
            "status": 503,
            "headers": {"Retry-After": "7"},
            "content_type": "application/json",
            "body": '{"error": {"message": "the generation queue is full", "type": "overloaded_error", "code": 503}}',
        },
        {
            "status": 200,
            "content_type": "text/event-stream",
            "body": _sse(
                {"choices": [{"index": 0, "delta": {"content": "Half an ans"}, "finish_reason": None}]},
                {"error": {"message": "generation failed: " + hostile, "type": "generation_error", "code": 502}},
                "[DONE]",
            ),
        },
        {
            "status": 200,
            "content_type": "text/event-stream",
            "body": _sse(
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
                {
                    "choices": [
                        {"index": 0, "delta": {"content": hostile + " see [1] and [2, 9]"}, "finish_reason": None}
                    ]
                },
                {
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "conversation_id": "c-1",
                    "citations": [
                        {
                            "n": 1,
                            "source": "/srv/docs/<script>.md",
                            "page": 3,
                            "anchor": None,
                            "heading": hostile,
                            "chunk_id": 1,
                            "score": 0.5,
                            "cited": True,
                            "text": hostile,
                        }
                    ],
                },
                "[DONE]",
            ),
        },
    ]

    def reply(route: Any) -> None:
        route.fulfill(**replies.pop(0))

    page.route("**/v1/chat/completions", reply)
    page.goto(f"{server.url}/widget?collection=default&key=secret-key")
    seen: list[Any] = []
    page.on("request", lambda r: seen.append(r) if "/v1/chat" in r.url else None)

    box = page.get_by_test_id("ragapp-input")
    box.fill("one")
    box.press("Enter")
    error = page.get_by_test_id("ragapp-error").nth(0)
    error.wait_for()
    assert "busy" in error.text_content() and "7 s" in error.text_content()
    assert "the generation queue is full" in error.text_content()
    assert seen[0].headers["authorization"] == "Bearer secret-key"

    box.fill("two")
    box.press("Enter")
    error = page.get_by_test_id("ragapp-error").nth(1)
    error.wait_for()
    assert error.text_content() == "Error: generation failed: " + hostile
    assert page.get_by_test_id("ragapp-answer").last.get_attribute("data-state") == "error"

    box.fill("three")
    box.press("Enter")
    answer = page.locator("[data-testid=ragapp-answer][data-state=done]")
    answer.wait_for()
    text = answer.get_by_test_id("ragapp-answer-text")
    assert text.text_content() == hostile + " see [1] and [2, 9]"
    assert [m.text_content() for m in text.get_by_test_id("ragapp-cite").all()] == ["[1]"]  # [2, 9] names no source
    text.get_by_test_id("ragapp-cite").click()
    assert answer.get_by_test_id("ragapp-passage").text_content() == hostile
    assert answer.get_by_test_id("ragapp-source").get_attribute("data-cited") == "true"
    assert "<script>.md (p. 3)" in answer.get_by_test_id("ragapp-source").text_content()
    # no element came from the server's text
    assert (
        page.evaluate("""() => {
      const root = document.querySelector('[data-testid=ragapp-widget]').shadowRoot;
      return root.querySelectorAll('img, b, script').length + (window.__pwned || 0);
    }""")
        == 0
    )
    assert page.get_by_test_id("ragapp-widget").get_attribute("data-conversation-id") == "c-1"
    assert [p for p in page.problems if "503" not in p] == []  # the browser logs the 503 itself
    assert seen[-1].headers["authorization"] == "Bearer secret-key"
    bodies = [r.post_data_json for r in seen]
    assert [len(b["messages"]) for b in bodies] == [1, 1, 1]  # failed questions are not kept as history


def _final(answer: str, citations: list[dict[str, Any]], sentences: list[dict[str, Any]], abstained: bool) -> str:
    """A made-up stream: `answer` as one delta, then the finish with the fields the server sends."""
    return _sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "a draft"}, "finish_reason": None}]},
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "conversation_id": "c-2",
            "citations": citations,
            "sentences": sentences,
            "abstained": abstained,
            "answer": answer,
        },
        "[DONE]",
    )


def _citation(n: int, chunk_id: int, text: str, cited: bool) -> dict[str, Any]:
    return {
        "n": n,
        "source": f"/srv/docs/doc{n}.md",
        "page": None,
        "anchor": None,
        "heading": None,
        "chunk_id": chunk_id,
        "score": 0.5,
        "cited": cited,
        "text": text,
    }


def test_made_up_answers_quote_per_mark_and_show_not_found(server: Server, browser: Any) -> None:
    """Made-up final events (Playwright routes), on a touch screen: a mark shows its own sentence's quote,
    or the start of its passage when that sentence quotes another one, as text; a tap opens it and a second
    tap closes it. An abstained answer replaces the streamed draft, looks different and lists the closest
    passages."""
    hostile = '<img src=x onerror="window.__pwned=1">'
    one = "Debian is a free operating system. " + hostile + " It was first released in 1993."
    two = "Ubuntu is based on Debian and adds a six-month release cycle."
    citations = [_citation(1, 11, one, True), _citation(2, 12, two, False)]
    sentences = [
        {"text": "Debian is free.", "citations": [1], "support": 0.8, "quote": {"chunk_id": 11, "start": 0, "end": 34}},
        {
            "text": "It dates from 1993.",
            "citations": [1],
            "support": 0.7,
            "quote": {"chunk_id": 11, "start": 35, "end": len(one)},  # the hostile text too
        },
    ]
    assert one[0:34] == "Debian is a free operating system." and one[35:].startswith(hostile)
    not_found = "I could not find this in the documents."
    replies = [
        _final("Debian is free.[1] It dates from 1993.[1] [2]", citations, sentences, False),
        _final(not_found, [_citation(1, 11, one, False), _citation(2, 12, two, False)], [], True),
    ]
    context = browser.new_context(viewport={"width": 420, "height": 800}, has_touch=True, is_mobile=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.route(
            "**/v1/chat/completions",
            lambda route: route.fulfill(status=200, content_type="text/event-stream", body=replies.pop(0)),
        )
        page.goto(f"{server.url}/widget")
        box = page.get_by_test_id("ragapp-input")
        box.fill("What is Debian?")
        box.press("Enter")
        answer = page.locator("[data-testid=ragapp-answer][data-state=done]").first
        answer.wait_for()
        assert (
            answer.get_by_test_id("ragapp-answer-text").text_content()
            == "Debian is free.[1] It dates from 1993.[1] [2]"
        )
        marks = answer.get_by_test_id("ragapp-cite")
        assert marks.count() == 3 and answer.get_attribute("data-abstained") is None
        pop = page.get_by_test_id("ragapp-quote")
        expected = [("quote", one[0:34]), ("quote", one[35:]), ("passage", two)]
        for i, (kind, text) in enumerate(expected):
            marks.nth(i).tap()
            pop.wait_for(state="visible")
            assert pop.get_attribute("data-kind") == kind
            assert pop.get_by_test_id("ragapp-quote-text").text_content() == text
            assert (
                f"doc{marks.nth(i).get_attribute('data-n')}.md"
                in pop.get_by_test_id("ragapp-quote-source").text_content()
            )
            marks.nth(i).tap()  # a second tap closes it
            pop.wait_for(state="hidden")
        marks.nth(1).tap()
        pop.wait_for(state="visible")
        page.keyboard.press("Escape")
        pop.wait_for(state="hidden")

        box.fill("What is Plan 9?")
        box.press("Enter")
        missing = page.locator("[data-testid=ragapp-answer][data-state=done]").nth(1)
        missing.wait_for()
        assert missing.get_attribute("data-abstained") == ""
        assert missing.get_by_test_id("ragapp-answer-text").text_content() == not_found  # not the draft
        assert missing.get_by_test_id("ragapp-not-found").is_visible()
        assert missing.get_by_test_id("ragapp-cite").count() == 0
        style = "a => [getComputedStyle(a).backgroundColor, getComputedStyle(a).borderTopStyle]"
        assert missing.evaluate(style) != answer.evaluate(style)  # visibly not an ordinary answer
        sources = missing.get_by_test_id("ragapp-sources")
        assert "Closest passages" in sources.text_content()
        assert [s.get_attribute("data-cited") for s in missing.get_by_test_id("ragapp-source").all()] == ["false"] * 2
        missing.get_by_test_id("ragapp-source-toggle").first.tap()
        assert missing.get_by_test_id("ragapp-passage").first.text_content() == one
        root = "document.querySelector('[data-testid=ragapp-widget]').shadowRoot"
        assert page.evaluate(f"() => {root}.querySelectorAll('img').length + (window.__pwned || 0)") == 0
        assert problems == []
    finally:
        context.close()
