"""The chat widget of `ragapp serve` (/widget and /widget.js) in a real headless Chromium, against a real
server over ragapp's own docs with the real models: answers stream in, [n] citations and sources open
their passages, an embed on another origin works through CORS, follow-ups continue the conversation.

The last test replaces the server's answers with made-up ones (Playwright routes) to check how errors and
hostile text are shown; everything else talks to the real server.
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
