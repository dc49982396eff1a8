"""Preference files, read into pairs: what reward training and DPO alignment learn from.

A line is a prompt with ranked completions (every preferred-first pair counts; ties give no pair) or one
chosen/rejected pair. Pairs are split by prompt, so held-out numbers are measured on prompts the model
never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ragapp.training_data import Record, TrainingDataError, read_records, split

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    line: int  # 1-based line of the training file it came from


@dataclass
class Rankings:
    pairs: list[Pair]
    notes: list[str]  # lines, or parts of lines, that gave no comparison
    prompts: list[str]  # distinct prompts with at least one pair, in file order


def _ranked(record: Record) -> list[tuple[str, int]]:
    """(text, rank) of each completion; a list of strings is ranked best first."""
    completions = record.data["completions"]
    if not isinstance(completions, list):
        raise record.error(f"`completions` must be a list, not {type(completions).__name__}")
    if not completions:
        raise record.error("`completions` is empty")
    as_text = isinstance(completions[0], str)  # the first completion decides the shape of all
    out: list[tuple[str, int]] = []
    for i, c in enumerate(completions, 1):
        if as_text and isinstance(c, str):
            text, rank = c, i
        elif not as_text and isinstance(c, dict):
            given_text, given_rank = c.get("text"), c.get("rank")
            if not isinstance(given_text, str):
                raise record.error(f"completion {i} needs `text` (a string)")
            if not isinstance(given_rank, int) or isinstance(given_rank, bool) or given_rank < 1:
                raise record.error(f"completion {i} needs `rank`, a positive integer (1 = best), not {given_rank!r}")
            text, rank = given_text, given_rank
        else:
            shape = "a string or {text, rank}" if i == 1 else ("a string" if as_text else "{text, rank}")
            raise record.error(
                f"completion {i} must be {shape}{' like completion 1' if i > 1 else ''}, not {type(c).__name__} "
                "(all strings, ranked best first, or all {text, rank})"
            )
        if not text.strip():
            raise record.error(f"completion {i} is empty")
        out.append((text, rank))
    seen: dict[str, int] = {}
    for i, (text, _) in enumerate(out, 1):
        if text in seen:
            raise record.error(f"completion {i} repeats completion {seen[text]}")
        seen[text] = i
    return out


def _line_pairs(record: Record) -> tuple[list[Pair], str | None, int]:
    """Every preferred-first pair of one line, a note when the line gives none, and its count of tied pairs."""
    d = record.data
    if "completions" in d and ("chosen" in d or "rejected" in d):
        raise record.error("give either `completions` or `chosen`/`rejected`, not both")
    prompt = str(record.text("prompt"))
    if "completions" not in d:
        if "chosen" not in d and "rejected" not in d:
            raise record.error("unknown shape: expected `completions` (a ranking) or `chosen` and `rejected`")
        chosen, rejected = str(record.text("chosen")), str(record.text("rejected"))
        if chosen == rejected:
            raise record.error("`chosen` and `rejected` are the same text")
        return [Pair(prompt, chosen, rejected, record.line)], None, 0
    ranked = _ranked(record)
    if len(ranked) == 1:
        return [], f"{record.where}: only one completion, no comparison", 0
    if len({rank for _, rank in ranked}) == 1:
        return [], f"{record.where}: all completions tied, no comparison", 0
    ordered = sorted(ranked, key=lambda c: c[1])  # stable: equal ranks keep their order
    pairs, ties = [], 0
    for i, (better, better_rank) in enumerate(ordered):
        for worse, worse_rank in ordered[i + 1 :]:
            if better_rank == worse_rank:
                ties += 1
            else:
                pairs.append(Pair(prompt, better, worse, record.line))
    return pairs, None, ties


def read_rankings(path: str | Path) -> Rankings:
    """Pairs from a JSONL file of rankings or chosen/rejected pairs; a malformed line stops with file:line.

    Lines that give no pair get a note each; tied pairs inside otherwise ordered rankings get one note in all.
    """
    pairs: list[Pair] = []
    notes: list[str] = []
    tied: dict[int, int] = {}
    for record in read_records(path):
        got, note, ties = _line_pairs(record)
        pairs += got
        notes += [note] if note else []
        if ties:
            tied[record.line] = ties
    if tied:
        lines = ", ".join(map(str, list(tied)[:10])) + (", …" if len(tied) > 10 else "")
        n = sum(tied.values())
        notes.append(
            f"{path}: {n} tied pair{'s' if n > 1 else ''} (line{'s' if len(tied) > 1 else ''} {lines}) "
            "give no comparison"
        )
    if not pairs:
        raise TrainingDataError(f"{path}: no comparison at all (every line has a single or only tied completions)")
    return Rankings(pairs, notes, list(dict.fromkeys(p.prompt for p in pairs)))


def split_pairs(rankings: Rankings, validation: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, list[Pair]]:
    """Train/validation/test by prompt: all pairs of a prompt on one side, or held-out accuracy would leak."""
    parts = split(rankings.prompts, lambda prompt: prompt, validation, test, seed)
    side = {prompt: name for name in SPLITS for prompt in getattr(parts, name)}
    out: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in rankings.pairs:
        out[side[pair.prompt]].append(pair)
    return out
