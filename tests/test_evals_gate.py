"""Quality gates: threshold parsing, floors, drops against a baseline, and the messages CI shows."""

from __future__ import annotations

import pytest
from ragapp.evals.gate import GateFailed, check_drops, check_floors, enforce, parse_thresholds

from ragapp.errors import UsageError

RUN = {"rougeL": 0.212, "bleu": 0.15, "hit@5": 0.8, "perplexity": 12.0, "latency_s": 2.0, "ndcg@5": None}


def test_parse_thresholds() -> None:
    assert parse_thresholds("rougeL=0.25,bleu=0.1", "--fail-under") == {"rougeL": 0.25, "bleu": 0.1}
    assert parse_thresholds(" rougeL = 0.25 , ", "--fail-under") == {"rougeL": 0.25}


@pytest.mark.parametrize("text", ["", "rougeL", "rougeL=", "rougeL=abc", "=0.2", "rougeL=nan", "bleu=inf"])
def test_bad_thresholds_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--fail-under"):
        parse_thresholds(text, "--fail-under")


def test_floors_report_which_metric_and_by_how_much() -> None:
    assert check_floors(RUN, {"bleu": 0.1, "hit@5": 0.8}) == []  # equal to the floor passes
    (failure,) = check_floors(RUN, {"rougeL": 0.25, "bleu": 0.1})
    assert failure == "rougeL = 0.2120 is 0.0380 below the required 0.25"


def test_floor_on_a_lower_is_better_metric_is_a_ceiling() -> None:
    (failure,) = check_floors(RUN, {"perplexity": 10, "latency_s": 3})
    assert failure.startswith("perplexity = 12 is 2 above the allowed 10")


def test_missing_value_fails_and_unknown_metric_is_a_usage_error() -> None:
    assert check_floors(RUN, {"ndcg@5": 0.1}) == ["ndcg@5 has no value in this run, required 0.1"]
    with pytest.raises(UsageError, match="no metric 'rougel'.*rougeL"):
        check_floors(RUN, {"rougel": 0.1})


def test_drops_against_a_baseline() -> None:
    base = {**RUN, "rougeL": 0.25, "perplexity": 11.0}
    assert check_drops(RUN, base, {"bleu": 0.0}, "base") == []
    failures = check_drops(RUN, base, {"rougeL": 0.02, "perplexity": 0.5}, "base")
    assert failures == [
        "rougeL dropped by 0.0380 vs run 'base' (0.2500 -> 0.2120), more than the allowed 0.02",
        "perplexity rose by 1.0000 vs run 'base' (11.0000 -> 12.0000), more than the allowed 0.5",
    ]
    assert check_drops(RUN, base, {"rougeL": 0.05}, "base") == []  # within the allowance
    assert check_drops({**RUN, "rougeL": 0.3}, base, {"rougeL": 0.0}, "base") == []  # improvements never fail


def test_enforce_raises_with_every_failure_and_exit_code_1() -> None:
    enforce([])
    with pytest.raises(GateFailed) as info:
        enforce(["a is low", "b is low"])
    assert str(info.value) == "quality gate failed: a is low; b is low"
    assert info.value.exit_code == 1


GROUNDED = {"groundedness": 0.6, "abstention_rate": 0.25, "judge_unparsed": 2.0, "judge_errors": 0.0}


def test_groundedness_floors_and_judge_ceilings() -> None:
    assert check_floors(GROUNDED, {"groundedness": 0.5}) == []
    (failure,) = check_floors({**GROUNDED, "groundedness": 0.4}, {"groundedness": 0.5})
    assert failure == "groundedness = 0.4000 is 0.1000 below the required 0.5"
    # The abstention rate and the judge's counts are lower-is-better: the number is a ceiling.
    assert check_floors(GROUNDED, {"abstention_rate": 0.3, "judge_errors": 0}) == []
    failures = check_floors(GROUNDED, {"abstention_rate": 0.2, "judge_unparsed": 0})
    assert failures == [
        "abstention_rate = 0.25 is 0.05 above the allowed 0.2 (lower is better)",
        "judge_unparsed = 2 is 2 above the allowed 0 (lower is better)",
    ]
    (drop,) = check_drops(GROUNDED, {**GROUNDED, "abstention_rate": 0.1}, {"abstention_rate": 0.1}, "base")
    assert drop.startswith("abstention_rate rose by 0.1500 vs run 'base'")
