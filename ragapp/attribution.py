"""Which passage supports each sentence of an answer, and where: after generation, with the embedding
model the workspace already has plus word overlap, so it works with any generator (a 135M model that
never writes `[n]` included) and offline.

`Evidence` is built once per question from the numbered passages in the prompt. Before generation it
says how relevant the passages are to the question (`relevance`, for abstaining without generating);
after it, `support` scores answer sentences against every sentence (and pair of neighbouring
sentences) of every passage. A sentence's support is a blend of the embedding cosine and the share of
its content words found in the passage span; the weights and thresholds are calibrated on the
hand-labelled cases in tests/data/attribution_labels.jsonl (docs/asking.md, "How attribution works").
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ragapp.answer import Quote, Sentence
from ragapp.prompt import cited_numbers
from ragapp.search import SearchHit

Encode = Callable[[list[str]], np.ndarray]  # texts -> unit-length vectors (Embedder.embed_queries)

# Support = COSINE_WEIGHT * cosine + (1 - COSINE_WEIGHT) * word recall (calibrated, see the module doc).
COSINE_WEIGHT = 0.5
MIN_WORDS = 3  # shorter pieces ("3.1.1.", "Yes.") join the next sentence: they make no claim alone
MAX_SPAN_CHARS = 400  # passage spans longer than this are cut at word boundaries
CITE_MARGIN = 0.08  # a sentence cites every passage within this much of its best support (at most CITE_MAX)
CITE_MAX = 2
QUOTE_CHARS = 400  # the longest quote answering for an unsupported draft
QUOTE_SKIP = 2  # subheadings skipped after a question's heading to reach its answer (more: a contents list)

_MARKS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
# A sentence ends at . ! ? (then closing quotes/brackets and the model's own [n] marks) before whitespace
# that is followed by something other than a mark; or at a line break.
_END = re.compile(r"""[.!?]["')\]]*(?:\s*\[\d+(?:\s*,\s*\d+)*\])*(?=\s+[^\s\[])|\n""")
_ABBREVIATIONS = frozenset(
    ["e.g", "i.e", "etc", "vs", "cf", "no", "fig", "approx", "incl", "resp", "mr", "mrs", "ms", "dr", "st"]
)
_WORD = re.compile(r"[a-z0-9]+")
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # "J.H.M. Dassen", "Ian R. Murdock"
_LETTER_WORD = re.compile(r"[^\W\d_][\w'’-]*")  # words, not numbers: "3.1.1." has none
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "done",
        "down",
        "during",
        "each",
        "either",
        "else",
        "etc",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "may",
        "me",
        "might",
        "more",
        "most",
        "must",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "one",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "shall",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "upon",
        "us",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "yes",
        "you",
        "your",
        "yours",
    ]
)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text`, whitespace trimmed. Pieces of fewer than MIN_WORDS words
    (a section number, a lone "Yes.") are joined to the sentence after them."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _END.finditer(text):
        if m.group() != "\n" and _abbreviation(text, m.start()):
            continue
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    trimmed = [_trim(text, a, b) for a, b in spans]
    out: list[tuple[int, int]] = []
    pending: int | None = None  # start of short pieces waiting for the next sentence
    for a, b in (s for s in trimmed if s[0] < s[1]):
        if pending is not None:
            a, pending = pending, None
        if len(_LETTER_WORD.findall(text[a:b])) < MIN_WORDS:
            pending = a
            continue
        out.append((a, b))
    if pending is not None:  # short pieces at the end stand alone: sentences before them never change
        out.append((pending, len(text.rstrip())))
    return out


def _abbreviation(text: str, dot: int) -> bool:
    """Whether the `.` at `dot` ends an abbreviation ("e.g.", "etc.") or an initial, not a sentence."""
    if text[dot] != ".":
        return False
    word = re.search(r"([A-Za-z.]+)$", text[:dot])
    return word is not None and (
        word.group(1).lower() in _ABBREVIATIONS or _INITIALS.fullmatch(word.group(1)) is not None
    )


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def content_words(text: str) -> set[str]:
    """Lower-cased words minus stopwords and citation marks, plural `s` dropped: what overlap compares."""
    words = _WORD.findall(_MARKS.sub(" ", text).lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words} - _STOPWORDS


def strip_marks(text: str) -> str:
    return _MARKS.sub("", text).strip()


@dataclass(frozen=True)
class Passage:
    """A numbered passage as attribution sees it: its number in the prompt, chunk and text."""

    n: int
    chunk_id: int
    text: str


@dataclass(frozen=True)
class _Span:
    passage: int  # index into Evidence.passages
    start: int
    end: int
    words: frozenset[str]


def _passage_spans(text: str) -> list[tuple[int, int]]:
    """Sentences of a passage, long ones cut at word boundaries into pieces of at most MAX_SPAN_CHARS."""
    out = []
    for a, b in split_sentences(text):
        while b - a > MAX_SPAN_CHARS:
            cut = text.rfind(" ", a, a + MAX_SPAN_CHARS)
            cut = cut if cut > a else a + MAX_SPAN_CHARS
            out.append((a, cut))
            a = cut + 1
        out.append((a, b))
    return out


@dataclass(frozen=True)
class Support:
    """How well the passages support one piece of text."""

    scores: list[float]  # per passage (Evidence.passages order), its best span's support
    best: int  # index of the best passage
    quote: tuple[int, int]  # its best span

    @property
    def score(self) -> float:
        return self.scores[self.best] if self.scores else 0.0


class Evidence:
    """The passages of one prompt, split into spans and embedded once, for scoring sentences against them."""

    def __init__(self, question: str, passages: Sequence[Passage], encode: Encode):
        self.passages = list(passages)
        self.encode = encode
        self.sentences = [_passage_spans(p.text) for p in self.passages]  # per passage, in order
        singles = [
            _Span(i, a, b, frozenset(content_words(p.text[a:b])))
            for i, p in enumerate(self.passages)
            for a, b in self.sentences[i]
        ]
        vectors = encode([strip_marks(question)] + [self.passages[s.passage].text[s.start : s.end] for s in singles])
        self._question = vectors[0], frozenset(content_words(question))
        spans, rows = list(singles), list(vectors[1:])
        # Neighbouring sentences together: a claim often draws on two of them.
        for k in range(len(singles) - 1):
            x, y = singles[k], singles[k + 1]
            if x.passage == y.passage and y.end - x.start <= 2 * MAX_SPAN_CHARS:
                spans.append(_Span(x.passage, x.start, y.end, x.words | y.words))
                pair = rows[k] + rows[k + 1]
                rows.append(pair / max(float(np.linalg.norm(pair)), 1e-12))
        self.spans = spans
        self.vectors = np.stack(rows) if rows else np.zeros((0, len(vectors[0])), dtype=np.float32)

    @property
    def relevance(self) -> float:
        """How well the best passage span matches the question, scored like a sentence's support (0..1):
        below `answer.min_relevance` ragapp abstains without generating."""
        return self._score(*self._question).score

    def support(self, sentences: Sequence[str]) -> list[Support]:
        """Each sentence's support by every passage, and its best span."""
        if not sentences:
            return []
        texts = [strip_marks(s) for s in sentences]
        vectors = self.encode(texts)
        return [self._score(v, frozenset(content_words(t))) for v, t in zip(vectors, texts, strict=True)]

    def _span_scores(self, vector: np.ndarray, words: frozenset[str]) -> np.ndarray:
        cosines = np.clip(self.vectors @ vector, 0.0, 1.0)
        recall = np.array([len(words & s.words) / len(words) if words else 0.0 for s in self.spans])
        return COSINE_WEIGHT * cosines + (1 - COSINE_WEIGHT) * recall

    def _score(self, vector: np.ndarray, words: frozenset[str]) -> Support:
        if not self.spans:
            return Support([], 0, (0, 0))
        scores = self._span_scores(vector, words)
        per_passage = [-1.0] * len(self.passages)
        best_span = [0] * len(self.passages)
        for k, span in enumerate(self.spans):
            if scores[k] > per_passage[span.passage]:
                per_passage[span.passage], best_span[span.passage] = float(scores[k]), k
        per_passage = [max(s, 0.0) for s in per_passage]
        best = max(range(len(per_passage)), key=per_passage.__getitem__)
        span = self.spans[best_span[best]]
        return Support(per_passage, best, (span.start, span.end))

    def quote(self, min_score: float = 0.0) -> tuple[Passage, int, int] | None:
        """The passage text that best answers the question, for when the model's draft is unsupported.

        Spans are tried from the most like the question down to `min_score`. A span that is the question
        itself as a heading ("3.1. Which ...?") stands for the statement after it. The quote is
        statements only (no heading, question or title: a table of contents answers nothing), and goes on
        to the next heading or QUOTE_CHARS."""
        if not self.spans:
            return None
        scores = self._span_scores(*self._question)
        for k in np.argsort(-scores, kind="stable"):
            if scores[k] < min_score:
                break
            span = self.spans[int(k)]
            passage = self.passages[span.passage]
            spans = self.sentences[span.passage]
            inside = [(a, b) for a, b in spans if a >= span.start and b <= span.end]
            while inside and not statement(passage.text[inside[0][0] : inside[0][1]]):
                inside.pop(0)
            if not inside:  # a heading: the answer is the statement after it and its subheadings, if any
                after = [(a, b) for a, b in spans if a >= span.end][: QUOTE_SKIP + 1]
                inside = [(a, b) for a, b in after if statement(passage.text[a:b])][:1]
            if not inside:
                continue
            start, end = inside[0][0], inside[-1][1]
            listing = passage.text[start:end].endswith(":")
            for a, b in spans:
                if a < end:
                    continue
                text = passage.text[a:b]
                listed = listing and not heading_like(text)  # an item of the list a statement opened
                if b - start > QUOTE_CHARS or not (statement(text) or listed):
                    break
                end = b  # go on to complete the answer, up to the next heading
                listing = listed or text.endswith(":")
            return passage, start, end
        return None

    def sentence(self, text: str, support: Support, min_support: float) -> Sentence:
        """`text` with the passages (numbers) that support it at least `min_support`, and its quote. A
        question makes no claim, so it cites nothing however much of it a passage holds (a small model
        copies the passages' question headings)."""
        if not support.scores or support.score < min_support or question(text):
            return Sentence(text, [], support.score, None)
        near = [i for i, s in enumerate(support.scores) if s >= min_support and s >= support.score - CITE_MARGIN]
        near.sort(key=lambda i: -support.scores[i])
        quote = Quote(self.passages[support.best].chunk_id, *support.quote)
        return Sentence(text, [self.passages[i].n for i in near[:CITE_MAX]], support.score, quote)

    def attribute(self, text: str, min_support: float) -> list[Sentence]:
        """The sentences of `text`, each with its supporting passages and quote."""
        pieces = [text[a:b] for a, b in split_sentences(text)]
        return [self.sentence(p, s, min_support) for p, s in zip(pieces, self.support(pieces), strict=True)]


def _marks(sentence: Sentence, text: str) -> str:
    """The marks to insert after `text` (one sentence): its citations, unless it has marks of its own."""
    return "" if not sentence.citations or cited_numbers(text) else "".join(f"[{n}]" for n in sentence.citations)


# -- echoes: the answer must not start by repeating a passage label, a heading or the question ---------------

_SECTION_NUMBER = re.compile(r"^\s*(?:\d+\.)+\d*\s*")
_SECTION = re.compile(r"\d+\.\d+(?:\.\d+)*\.?\s")  # "3.1. ", "10.2.1 ": not a list item "2. "
_LABEL = re.compile(r"^\s*(?:\[\d+\]\s*)+")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_LABEL_START = re.compile(r"[\d.\[\]\s]*")


def _norm(text: str) -> str:
    text = _SECTION_NUMBER.sub("", _LABEL.sub("", text))
    return _NON_WORD.sub(" ", strip_marks(text).lower()).strip()


def heading_like(line: str) -> bool:
    """A passage line that is a heading or a question (numbered "3.1. ...", or ending in "?"): the first
    thing a small model copies instead of answering."""
    line = line.strip()
    return 0 < len(line) <= 160 and (question(line) or _SECTION.match(line) is not None)


NAVIGATION_SHARE = 0.8  # a passage whose lines are this much headings is a contents list


_NOT_TITLE = re.compile(r"[(){}\[\]=<>_/\\$`#|@+]")  # code, paths, versions ("Firefox 3.6+"): not a title


def _title_line(line: str) -> bool:
    """A line that reads like an unnumbered title ("Writing your first Django app, part 1")."""
    line = line.strip()
    words = len(line.split())
    return 2 <= words <= TITLE_WORDS and line[0].isupper() and line[-1] not in ".,;:" and not _NOT_TITLE.search(line)


def navigation(text: str) -> bool:
    """Whether a passage is a list of headings (a table of contents, an index): it names the section that
    answers, but holds none of the answer, and a small model copies its titles instead of answering.
    Four numbered headings or questions make a list; unnumbered titles take six (a short list of items
    may be an answer)."""
    lines = [line for line in text.splitlines() if line.strip()]
    share = NAVIGATION_SHARE * len(lines)
    headings = [heading_like(line) for line in lines]
    titled = sum(h or _title_line(line) for h, line in zip(headings, lines, strict=True))
    return (len(lines) >= 4 and sum(headings) >= share) or (len(lines) >= 6 and titled >= share)


def prompt_hits(hits: Sequence[SearchHit], k: int) -> list[SearchHit]:
    """The `k` hits a prompt gets: passages that say something before contents lists, in rank order."""
    lists = [navigation(h.text) for h in hits]
    content = [i for i, listed in enumerate(lists) if not listed][:k]
    kept = set(content + [i for i, listed in enumerate(lists) if listed][: k - len(content)])
    return [h for i, h in enumerate(hits) if i in kept]


_QUESTION_END = re.compile(r"""\?[?!"')\]\s]*$""")
_STATEMENT_END = re.compile(r"""[.!:;…]["')\]]*$""")
TITLE_WORDS = 12  # a line this short without a full stop is a title ("2. Getting and installing Debian")


def question(text: str) -> bool:
    """Whether `text` ends as a question ("...?", "...?!", "...?)"), citation marks aside."""
    return _QUESTION_END.search(strip_marks(text)) is not None


def statement(text: str) -> bool:
    """Whether a passage sentence says something: no heading, question or title (what a quote is made of)."""
    text = strip_marks(text)
    if heading_like(text) or len(_LETTER_WORD.findall(text)) < MIN_WORDS:
        return False
    return _STATEMENT_END.search(text) is not None or len(text.split()) > TITLE_WORDS


def is_echo(unit: str, echoes: Sequence[str]) -> bool:
    """Whether `unit` (the answer's first line or sentence) only repeats a label, a heading or the question:
    all of one of `echoes`, or most of its start, with nothing of its own."""
    mine = _norm(unit)
    if not mine or question(unit):  # a label, a section number; a question answers nothing
        return True
    for echo in echoes:
        theirs = _norm(echo)
        if theirs and (mine == theirs or (len(mine) >= 0.6 * len(theirs) and theirs.startswith(mine))):
            return True
    return False


_UNIT_END = re.compile(r"""[.!?]["')\]]*\s+(?=[^\s\[])|\n""")
HOLD_CHARS = 300  # the most held back at the start while deciding whether it is an echo


def _letterless(text: str) -> bool:
    return _LETTER_WORD.search(text) is None


class AnswerWriter:
    """Turns generated text into the answer as it streams: drops leading echoes, inserts `[n]` marks after
    each sentence once it is complete, and attributes every sentence. What `push` and `finish` return joins
    to exactly `text` (streamed and one-shot answers are the same), holding back only the start while it
    may still be an echo and the whitespace after a sentence that may still get marks."""

    def __init__(self, evidence: Evidence, echoes: Sequence[str], min_support: float, insert: bool = True):
        self.evidence = evidence
        self.echoes = [e for e in echoes if e and e.strip()]
        self.min_support = min_support
        self.insert = insert
        self.raw = ""  # the generated text after the dropped echoes
        self._start = ""  # text not yet known to be no echo
        self._body = False
        self._done: dict[tuple[int, int], Sentence] = {}
        self._sent = 0  # characters of the rendered answer already returned
        self.sentences: list[Sentence] = []
        self.text = ""
        self.finished = False
        self.seconds = 0.0  # spent attributing sentences

    def push(self, piece: str) -> str:
        if not self._body:
            self._start += piece
            self._skip_echoes(final=False)
            if not self._body:
                return ""
        else:
            self.raw += piece
        return self._emit(final=False)

    def finish(self, cut: bool = False) -> str:
        """The rest of the answer. `cut`: generation stopped at its token limit, so an unfinished last
        sentence ends in "…" (the answer says it was cut instead of stopping mid-word)."""
        if not self._body:
            self._skip_echoes(final=True)
        spans = split_sentences(self.raw)
        if len(spans) > 1 and _letterless(self.raw[spans[-1][0] :]):  # "3.1.2." left by a cut repeat
            self.raw = self.raw[: spans[-1][0]].rstrip()
        elif cut and self.raw.strip() and self.raw.rstrip()[-1] not in ".!?:;…)]\"'`":
            self.raw = self.raw.rstrip() + "…"
        out = self._emit(final=True)
        self.sentences = [self._sentence(span) for span in split_sentences(self.raw)]
        self.finished = True
        return out

    def _skip_echoes(self, final: bool) -> None:
        while True:
            text = self._start.lstrip()
            m = _UNIT_END.search(text)
            if m is None:
                held = _norm(text)
                # Digits, dots and brackets may still become a label ("[2]") or a section number ("3.1.").
                maybe = not held or _LABEL_START.fullmatch(text) is not None
                maybe = maybe or any(_norm(e).startswith(held) for e in self.echoes)
                if final or len(text) > HOLD_CHARS or not maybe:
                    if final and text and is_echo(text, self.echoes):
                        text = ""
                    self._body, self.raw, self._start = True, text, ""
                return
            unit = text[: m.end()]
            if not is_echo(unit, self.echoes):
                self._body, self.raw, self._start = True, text, ""
                return
            self._start = text[m.end() :]

    def _sentence(self, span: tuple[int, int]) -> Sentence:
        if span not in self._done:
            mark = time.perf_counter()
            text = self.raw[span[0] : span[1]]
            self._done[span] = self.evidence.sentence(text, self.evidence.support([text])[0], self.min_support)
            self.seconds += time.perf_counter() - mark
        return self._done[span]

    def _emit(self, final: bool) -> str:
        """The rendered answer so far (marks after closed sentences); returns what was not returned before."""
        end = len(self.raw.rstrip())
        spans = split_sentences(self.raw)
        if not final and len(spans) > 1 and _letterless(self.raw[spans[-1][0] :]):
            end = len(self.raw[: spans[-1][0]].rstrip())  # a section number may be all that comes: hold it
        out, at = [], 0
        for span in spans:
            if not final and span[1] >= end:  # still open: it may grow, and its marks come later
                break
            out.append(self.raw[at : span[1]])
            if self.insert:
                out.append(_marks(self._sentence(span), self.raw[span[0] : span[1]]))
            at = span[1]
        out.append(self.raw[at:end])
        rendered = "".join(out)
        if final:
            self.text = rendered
        piece, self._sent = rendered[self._sent :], len(rendered)
        return piece
