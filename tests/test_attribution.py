"""Sentence attribution (ragapp.attribution): the splitter, the streaming writer, and answers from the real
models over ragapp's docs: every sentence attributed, [n] marks tied to real quotes, abstention."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ragapp import App
from ragapp.attribution import (
    AnswerWriter,
    Evidence,
    Passage,
    is_echo,
    navigation,
    prompt_hits,
    question,
    split_sentences,
    statement,
)
from ragapp.cli import cli
from ragapp.generators.base import repeats
from ragapp.search import SearchHit
from tests.support import DocsWorkspaces


def fake_encode(texts: list[str]) -> np.ndarray:
    """A FAKE encoder (control-flow tests only): one random unit vector per distinct text."""
    rows = [np.random.default_rng(sum(map(ord, t))).normal(size=16) for t in texts]
    vectors = np.stack(rows) if rows else np.zeros((0, 16))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


PASSAGES = [
    Passage(1, 10, "3.1. Which Debian distribution is better for me?\nIt depends on what you intend to do. "
                   "Stable is the safest choice for servers."),
    Passage(2, 11, "Debian GNU/Linux is a free operating system. It was founded by Ian Murdock in 1993."),
]  # fmt: skip
QUESTION = "Which Debian distribution is better for me?"
ECHOES = [QUESTION, "3.1. Which Debian distribution is better for me?"]


def spans(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def test_sentences_split_at_ends_and_lines_not_abbreviations_or_marks() -> None:
    assert spans("Use e.g. the flat index. It is exact [1]. Then stop here.\nA new line here") == [
        "Use e.g. the flat index.",
        "It is exact [1].",
        "Then stop here.",
        "A new line here",
    ]
    assert spans("The first edition was made by J.H.M. Dassen (Ray). Then Ian R. Murdock.") == [
        "The first edition was made by J.H.M. Dassen (Ray).",
        "Then Ian R. Murdock.",
    ]
    # A section number or a one-word piece joins the sentence after it; a short tail stands alone.
    assert spans("3.1.1. You asked me to install stable. Yes. Debian has three releases. Ok") == [
        "3.1.1. You asked me to install stable.",
        "Yes. Debian has three releases.",
        "Ok",
    ]


def test_echoes_are_labels_headings_or_the_question() -> None:
    assert is_echo("[2] 3.1. Which Debian distribution is better for me?\n", ECHOES)
    assert is_echo("3.1.", ECHOES) and is_echo("[1]", ECHOES)
    assert is_echo("Which Debian distribution is better", ECHOES)  # most of it, cut short
    assert not is_echo("Stable is better for most people.", ECHOES)
    assert not is_echo("Which", ECHOES)  # too little of it to call it an echo


@pytest.mark.parametrize(
    "generated",
    [
        (
            "3.1. Which Debian distribution is better for me?\nStable is the safest choice for servers. "
            "It was founded by Ian Murdock in 1993. Bananas grow in Ecuador."
        ),
        "[1] Which Debian distribution is better for me? It depends on what you intend to do [1]. Cats purr loudly.",
        "Stable.\n\nIt depends on what you intend to do. e.g. servers. Yes. No",
        "  \n[2]\n",
        "Debian was founded in 1993 [2].\nThe end of it all.\n",
        "It depends on what you intend to do.\n\n3.1.2.",  # a section number left by a cut repeat goes
        "It depends on what you intend to do.\n\n3.1.2. Stable is the safest choice.",
    ],
)
def test_streamed_answer_is_the_one_shot_answer(generated: str) -> None:
    """Fed in random pieces, the writer returns pieces that join to exactly what the whole text gives."""
    evidence = Evidence(QUESTION, PASSAGES, fake_encode)
    whole = AnswerWriter(evidence, ECHOES, 0.3)
    expected = whole.push(generated) + whole.finish()
    assert expected == whole.text and not expected.startswith(("3.1", "[", "Which"))
    for seed in range(200):
        rng = random.Random(seed)
        writer, out, at = AnswerWriter(evidence, ECHOES, 0.3), [], 0
        while at < len(generated):
            step = rng.randint(1, 8)
            out.append(writer.push(generated[at : at + step]))
            at += step
        out.append(writer.finish())
        assert "".join(out) == expected, (seed, out)
        assert [s.text for s in writer.sentences] == [s.text for s in whole.sentences]


def test_a_cut_answer_ends_in_an_ellipsis_and_marks_follow_sentences() -> None:
    evidence = Evidence(QUESTION, PASSAGES, fake_encode)
    writer = AnswerWriter(evidence, ECHOES, 0.0)  # every sentence supported: marks everywhere
    writer.push("It depends on what you intend to do. Stable is the safest choice for")
    writer.finish(cut=True)
    text = writer.text
    assert text.endswith("choice for…" + "".join(f"[{n}]" for n in writer.sentences[-1].citations))
    first = writer.sentences[0]
    assert text.startswith(first.text + "".join(f"[{n}]" for n in first.citations))
    assert all(s.quote is not None and s.quote.chunk_id in (10, 11) for s in writer.sentences)


def test_the_quote_for_an_unsupported_draft_is_what_follows_the_question_heading() -> None:
    quote = Evidence(QUESTION, PASSAGES, fake_encode).quote()
    assert quote is not None
    passage, start, end = quote
    assert passage.n == 1
    assert passage.text[start:end] == "It depends on what you intend to do. Stable is the safest choice for servers."
    # A heading followed by another heading: the quote skips to the first sentence that answers.
    nested = Passage(3, 12, "3.1. Which Debian distribution is better for me?\n3.1.1. Is stable old?\nIt is tested.")
    passage, start, end = Evidence(QUESTION, [nested], fake_encode).quote() or (nested, 0, 0)
    assert passage.text[start:end] == "It is tested."


def test_a_contents_list_gives_no_quote() -> None:
    """Headings, questions ("...?!") and titles answer nothing: no quote rather than a heading as the answer."""
    contents = Passage(
        1,
        13,
        "1.1. What is this FAQ?\n1.2. Which Debian distribution is better for me?\n1.3. Is stable old?\n"
        "1.4. OK, now I know what Debian is... what is Linux?!\n2. Getting and installing Debian\n2.1. Where?",
    )
    assert Evidence(QUESTION, [contents], fake_encode).quote() is None
    answer = Passage(2, 14, "Stable is the safest choice for servers.")
    passage, start, end = Evidence(QUESTION, [contents, answer], fake_encode).quote() or (contents, 0, 0)
    assert passage.text[start:end] == "Stable is the safest choice for servers."
    assert Evidence(QUESTION, [contents, answer], fake_encode).quote(min_score=1.01) is None
    listing = Passage(
        3,
        15,
        "Which Debian distribution is better for me? Debian GNU/Linux provides:\nthe stable distribution\n"
        "the testing distribution\n3.2. Other releases",
    )
    passage, start, end = Evidence(QUESTION, [listing], fake_encode).quote() or (listing, 0, 0)
    assert passage.text[start:end] == "Debian GNU/Linux provides:\nthe stable distribution\nthe testing distribution"


def test_a_question_in_the_answer_cites_nothing() -> None:
    """A heading the model copied ("3.1. Which ...?") is in a passage word for word, but claims nothing."""
    evidence = Evidence(QUESTION, PASSAGES, fake_encode)
    copied, stated = evidence.attribute(
        "3.1. Which Debian distribution is better for me? It depends on what you intend to do.", 0.5
    )
    assert copied.citations == [] and copied.quote is None and copied.support >= 0.5
    assert stated.citations == [1]


def test_contents_lists_give_way_to_passages_that_say_something() -> None:
    contents = "Table of Contents\n\n1.1. What is this FAQ?\n\n1.2. What is Debian?\n\n1.2.1. Why?\n\n1.3. Who?"
    hits = [hit(1, contents), hit(2, "Debian is a free operating system."), hit(3, "1.1. What is this FAQ?\nIt lists"
            " questions.\n1.2. Who wrote it?\nMany people.\n2.1. Where is it?\nOnline."), hit(4, "Stable is tested.")]  # fmt: skip
    assert navigation(contents) and not navigation(hits[2].text) and not navigation("1.1. A\n1.2. B")
    assert [h.chunk_id for h in prompt_hits(hits, 2)] == [2, 3]  # rank order kept
    assert [h.chunk_id for h in prompt_hits(hits, 4)] == [1, 2, 3, 4]  # a list still fills a free place
    assert [h.chunk_id for h in prompt_hits(hits[:1], 2)] == [1]
    sphinx = "Getting started\nDjango at a glance\nDesign your model\nInstall it\nEnjoy the free API\nThat’s it!"
    assert navigation(sphinx)  # unnumbered titles: a contents page too
    browsers = (
        "Browsers that support X-Frame-Options\nInternet Explorer 8+\nEdge\nFirefox 3.6.9+\nOpera 10.5+\nSafari 4+"
    )
    formats = "Formats it reads:\nMarkdown\nPDF\nHTML\nWord documents\nSpreadsheets"
    code = "import os\nimport sys\nfrom pathlib import Path\nprint(sys.argv)\nos.exit(0)\nPath.cwd()"
    assert not any(map(navigation, [browsers, formats, code]))  # lists and code that answer questions


def hit(chunk_id: int, text: str) -> SearchHit:
    return SearchHit(chunk_id, 1.0 / chunk_id, text, f"/docs/{chunk_id}.html", None, None, None, None, 0, len(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what is Linux?!", True),
        ('Is it "stable?"', True),
        ("Is it stable? [2]", True),
        ("It is stable.", False),
        ("Why? Because it is tested.", False),
    ],
)
def test_question(text: str, expected: bool) -> None:
    assert question(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Stable is the safest choice for servers.", True),
        ("Run it as root:", True),
        ("2. Getting and installing Debian GNU/Linux", False),
        ("3.1. Which Debian distribution is better for me?", False),
        ("what is Linux?!", False),
        ("Yes.", False),
        ("the installer detects the hardware and lists every package that it can install without a network", True),
    ],
)
def test_statement(text: str, expected: bool) -> None:
    assert statement(text) is expected


# -- the real models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, docs_workspaces: DocsWorkspaces
) -> Path:
    ws = tmp_path_factory.mktemp("attribution") / "ws"
    docs_workspaces.copy(ws, request)
    return ws


def check_consistent(data: dict) -> None:
    """`cited` exactly when a sentence cites the passage; quotes lie inside their passage's text."""
    by_n = {c["n"]: c for c in data["citations"]}
    cited_by_sentences = {n for s in data["sentences"] for n in s["citations"]}
    assert {n for n, c in by_n.items() if c["cited"]} == cited_by_sentences
    for s in data["sentences"]:
        assert s["text"] in data["answer"]
        assert 0 <= s["support"] <= 1
        if s["citations"]:
            quote = s["quote"]
            passage = next(c for c in data["citations"] if c["chunk_id"] == quote["chunk_id"])
            assert 0 <= quote["start"] < quote["end"] <= len(passage["text"])
            assert passage["n"] == s["citations"][0]
            for n in s["citations"]:
                assert f"[{n}]" in data["answer"]
        else:
            assert s["quote"] is None


@pytest.mark.slow
def test_answers_are_attributed_with_marks_and_quotes(workspace: Path) -> None:
    app = App(workspace)
    pieces: list[str] = []
    question = "How do I remove documents whose files were deleted?"
    streamed = app.ask(question, on_token=pieces.append)
    data = streamed.to_dict()
    assert not data["abstained"] and data["sentences"]
    check_consistent(data)
    assert not repeats(streamed.answer)  # `make demo`'s question: it looped before the repeat guard
    assert any(c["cited"] for c in data["citations"])  # the shipped model writes no [n]; ragapp inserted them
    assert "".join(pieces) == streamed.answer == app.ask(question).answer  # streamed == not streamed
    assert streamed.timings["attribute_s"] < 0.5 * streamed.timings["generate_s"]


@pytest.mark.slow
def test_unrelated_questions_abstain_with_the_closest_passages(workspace: Path) -> None:
    app = App(workspace, config={"answer": {"not_found": "Not in these documents."}})
    pieces: list[str] = []
    answer = app.ask("What is the boiling point of tungsten in kelvin?", on_token=pieces.append)
    assert answer.abstained and answer.answer == "Not in these documents." and answer.sentences == []
    assert answer.citations and not any(c.cited for c in answer.citations)
    assert "".join(pieces).endswith("Not in these documents.")
    off = App(workspace, config={"answer": {"abstain": False}}).ask("What is the boiling point of tungsten?")
    assert not off.abstained and off.answer != "Not in these documents."


@pytest.mark.slow
def test_cli_ask_json_and_text_show_attribution(workspace: Path) -> None:
    question = "Which command shows the effective configuration?"
    result = CliRunner().invoke(cli, ["-w", str(workspace), "ask", question, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"sentences", "abstained"} <= data.keys()
    check_consistent(data)
    text = CliRunner().invoke(cli, ["-w", str(workspace), "ask", question, "--no-stream"])
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith(data["answer"])  # greedy: the same answer, marks included


LABELS = Path(__file__).parent / "data" / "attribution_labels.jsonl"


def test_groundedness_agrees_with_hand_labels() -> None:
    """The classifier (support >= answer.min_support) against 76 hand-labelled sentences from real answers
    over ragapp's docs and the Debian FAQ; prints the confusion matrix (pytest -s)."""
    from ragapp.config import AnswerSettings
    from ragapp.embedding import load_embedder

    cases = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    assert len(cases) >= 60 and {c["origin"] for c in cases} == {"debian-faq", "ragapp-docs"}
    encode = load_embedder().embed_queries
    threshold = AnswerSettings().min_support
    matrix = {(truth, said): 0 for truth in (True, False) for said in (True, False)}
    for case in cases:
        passages = [Passage(p["n"], i, p["text"]) for i, p in enumerate(case["passages"])]
        [support] = Evidence(case["question"], passages, encode).support([case["sentence"]])
        matrix[(case["supported"], support.score >= threshold)] += 1
    agree = (matrix[(True, True)] + matrix[(False, False)]) / len(cases)
    print(f"\nlabels {len(cases)}: agreement {agree:.3f}; supported: {matrix[(True, True)]} found, "
          f"{matrix[(True, False)]} missed; unsupported: {matrix[(False, False)]} rejected, "
          f"{matrix[(False, True)]} accepted")  # fmt: skip
    assert agree >= 0.8, matrix
