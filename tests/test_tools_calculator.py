"""The calculator tool: exact answers, Python's semantics, and refusals a model can act on (no models needed)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool

from ragapp.tools.calculator import CalculationError, calculate, calculator_tool


def refusal(expression: str) -> str:
    with pytest.raises(CalculationError) as info:
        calculate(expression)
    return str(info.value)


# Exactness


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0.1 + 0.2", "0.3"),
        ("1234 * 5678", "7006652"),
        ("2**100", "1267650600228229401496703205376"),
        ("10 / 4", "2.5"),
        ("3 / 8", "0.375"),
        ("1 / 3 * 3", "1"),
        ("0.1 ** 2", "0.01"),
        ("1e3", "1000"),
        ("1.5e-3", "0.0015"),
        ("1_000 * 2", "2000"),
        ("-1 / 8", "-0.125"),
        ("1 / 2**10", "0.0009765625"),
    ],
)
def test_exact_results(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


def test_non_terminating_rationals_show_the_fraction_and_an_approximation() -> None:
    assert calculate("1/3") == "1/3 ≈ 0.3333333333333333"
    assert calculate("-2/3") == "-2/3 ≈ -0.6666666666666666"
    assert calculate("sqrt(16/9)") == "4/3 ≈ 1.3333333333333333"


def test_big_integers_are_exact_beyond_pythons_str_limit() -> None:
    assert calculate("2**10000") == str(2**10000)  # 3011 digits
    assert calculate("10**10000") == "1" + "0" * 10000  # over the default 4300-digit int-to-str limit
    assert calculate("1/(3*10**400)").endswith("≈ 3.3333333333333333e-401")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("7 // 2", "3"), ("-7 // 2", "-4"), ("7 % 3", "1"), ("(-7) % 3", "2"), ("7.5 // 2", "3"), ("-7.5 % 2", "0.5")],
)
def test_floor_division_and_modulo_follow_python(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


# Precedence, unary operators and the aliases models write


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("-2**2", "-4"),
        ("(-2)**2", "4"),
        ("2**3**2", "512"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("--3", "3"),
        ("+3 - -2", "5"),
        ("2**-1", "0.5"),
        ("1234 * (5 + 6)", "13574"),
    ],
)
def test_precedence_and_unary_minus_follow_python(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("2^10", "1024"), ("-2^2", "-4"), ("6 × 7", "42"), ("6 ÷ 4", "1.5"), ("5 − 7", "-2"), ("3 × 2^3 ÷ 4", "6")],
)
def test_operator_aliases(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


def test_surrounding_whitespace_and_a_trailing_equals_sign_are_ignored() -> None:
    assert calculate("  6 * 7 =  ") == "42"
    assert calculate("6*7=") == "42"


def test_a_long_flat_sum_is_not_too_deep() -> None:
    assert calculate("+".join(["1"] * 400)) == "400"


# Functions and constants


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(16)", "4"),
        ("sqrt(0.25)", "0.5"),
        ("8 ** (1/3)", "2"),
        ("4 ** 1.5", "8"),
        ("abs(-3/8)", "0.375"),
        ("round(2.5)", "2"),  # Python rounds halves to even
        ("round(3.5)", "4"),
        ("round(2.675, 2)", "2.68"),  # exact, unlike float 2.675
        ("round(1234, -2)", "1200"),
        ("floor(-2.5)", "-3"),
        ("ceil(2.1)", "3"),
        ("min(3, 1/2, 2)", "0.5"),
        ("max(1, 234)", "234"),
        ("max(7)", "7"),
    ],
)
def test_functions(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(2)", "1.4142135623730951 (approximate)"),
        ("2 ** 0.5", "1.4142135623730951 (approximate)"),
        ("pi", "3.141592653589793 (approximate)"),
        ("e", "2.718281828459045 (approximate)"),
        ("2 * pi", "6.283185307179586 (approximate)"),
        ("round(pi, 2)", "3.14 (approximate)"),
        ("floor(pi * 100)", "314 (approximate)"),
        ("max(pi, 3)", "3.141592653589793 (approximate)"),
    ],
)
def test_irrational_results_are_marked_approximate(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


def test_an_exact_value_chosen_over_an_approximate_one_stays_exact() -> None:
    assert calculate("min(pi, 3)") == "3"


def test_approximate_powers_of_bases_beyond_float_range() -> None:
    value = float(calculate("(3**1000) ** (1/7)").removesuffix(" (approximate)"))
    assert value == pytest.approx(1.4460364679163293e68, rel=1e-12)
    assert calculate("sqrt(2 * 10**400)") == "1.414213562373095e+200 (approximate)"


# Refusals: every message says what is wrong


@pytest.mark.parametrize("expression", ["1/0", "1 // 0", "5 % 0", "0 ** -1", "pi / 0", "0.0 ** -1", "1 / (2 - 2)"])
def test_division_by_zero(expression: str) -> None:
    assert refusal(expression) == "division by zero"


@pytest.mark.parametrize(
    ("expression", "name"), [("x + 1", "x"), ("inf", "inf"), ("PI", "PI"), ("__builtins__", "__builtins__")]
)
def test_unknown_names(expression: str, name: str) -> None:
    assert refusal(expression).startswith(f"unknown name {name!r}")


@pytest.mark.parametrize(
    ("expression", "what"),
    [
        ("().__class__", "attribute access (.__class__)"),
        ("(1).real", "attribute access (.real)"),
        ("__import__('os').system('echo hi')", "attribute access (.system)"),
        ("(1, 2)[0]", "subscript"),
        ("(lambda: 1)()", "lambda"),
        ("lambda: 1", "lambda"),
        ("[x for x in (1, 2)]", "comprehension"),
        ("max(x for x in (1, 2))", "comprehension"),
        ("'abc'", "string"),
        ("b'abc'", "bytes"),
        ("(1, 2)", "tuple"),
        ("[1, 2]", "list"),
        ("{1: 2}", "dict"),
        ("{1}", "set"),
        ("1 < 2", "comparison"),
        ("1 == 1", "comparison"),
        ("1 and 2", "boolean operator (and/or)"),
        ("not 1", "boolean operator (not)"),
        ("(y := 3)", "assignment (:=)"),
        ("f'{1}'", "f-string"),
        ("1 if 2 else 3", "conditional expression"),
        ("True", "True"),
        ("None", "None"),
        ("2j", "complex number"),
        ("6 & 3", "bitwise operator (&)"),
        ("~1", "bitwise operator (~)"),
        ("1 << 2", "bit shift (<<)"),
        ("(1)(2)", "call of 1"),
        ("sqrt(4)(2)", "call of sqrt(4)"),
        ("round(1.5, ndigits=0)", "keyword argument (ndigits=...; pass arguments by position)"),
        ("max(*(1, 2))", "starred argument"),
    ],
)
def test_constructs_outside_arithmetic_are_refused(expression: str, what: str) -> None:
    assert refusal(expression).startswith(f"not allowed in an expression: {what}")


@pytest.mark.parametrize("name", ["__import__", "open", "eval", "exec", "print", "sum"])
def test_calls_of_anything_but_the_functions_are_refused(name: str) -> None:
    assert refusal(f"{name}(1)") == (
        f"unknown function {name!r}: the functions are abs, ceil, floor, max, min, round, sqrt"
    )


def test_functions_and_constants_used_the_wrong_way() -> None:
    assert refusal("sqrt + 1") == "sqrt is a function: call it, e.g. sqrt(2)"
    assert refusal("pi(2)") == "pi is a constant, not a function"
    assert refusal("sqrt(1, 2)") == "sqrt() takes 1 argument, got 2"
    assert refusal("round(1, 2, 3)") == "round() takes 1 or 2 arguments, got 3"
    assert refusal("max()") == "max() takes at least 1 argument, got 0"
    assert refusal("round(1/3, 1.5)").startswith("round()'s second argument")
    assert refusal("round(1/3, 100000)") == "round() to 100000 digits: the limit is 10000"


def test_no_real_result() -> None:
    assert refusal("sqrt(-1)") == "square root of a negative number is not a real number"
    assert refusal("sqrt(-pi)") == "square root of a negative number is not a real number"
    assert refusal("(-8) ** (1/3)") == "a negative number raised to a fractional power is not a real number"
    assert refusal("(-pi) ** 0.5") == "a negative number raised to a fractional power is not a real number"


def test_thousands_separators_are_refused_not_read_as_tuples() -> None:
    message = "thousands separators are not allowed: write 1234, not 1,234"
    assert refusal("1,234 * 2") == message
    assert refusal("2 * 1,234,567") == message
    assert refusal("1,234.5") == message


def test_nothing_is_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input only ever reaches `compile` to build an AST, and a refused expression has no side effect."""
    real_compile = builtins.compile

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("eval/exec was called")

    compiled: list[str] = []

    def only_ast(source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any) -> Any:
        assert flags & ast.PyCF_ONLY_AST, "the expression was compiled to code"
        compiled.append(source)
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", only_ast)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    marker = tmp_path / "pwned"
    attacks = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w')",
        f"[c for c in ().__class__.__base__.__subclasses__()][0]('touch {marker}')",
        f"(lambda: __import__('os').system('touch {marker}'))()",
        f"exec(\"open('{marker}', 'w')\")",
        "().__class__",
    ]
    for attack in attacks:
        with pytest.raises(CalculationError):
            calculate(attack)
    assert calculate("6 * 7") == "42"
    assert len(compiled) == len(attacks) + 1  # the check above really watched ast.parse
    assert not marker.exists()


def test_empty_long_and_unparsable_input() -> None:
    assert refusal("") == "empty expression"
    assert refusal("   ") == "empty expression"
    assert refusal(" = ") == "empty expression"
    assert refusal("1+" * 500 + "11") == "expression too long: 1002 characters (the limit is 1000)"
    assert refusal("1 +").startswith("could not parse: ")
    assert refusal("3 pi").startswith("could not parse: ")
    assert refusal("(1 + 2") == "could not parse: '(' was never closed"
    assert refusal("1\x00").startswith("could not parse: ")


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "expression",
    ["-" * 200 + "1", "sqrt(" * 150 + "4" + ")" * 150, "1+(" * 120 + "1" + ")" * 120, "(" * 250 + "1" + ")" * 250],
)
def test_deep_nesting_is_refused(expression: str) -> None:
    message = refusal(expression)
    assert message in (
        "expression nested too deeply (the limit is 100 levels)",
        "could not parse: too many nested parentheses",
    )


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "exponent too large: 387420489 (the limit is 10000)"),
        ("2**100000", "exponent too large: 100000 (the limit is 10000)"),
        ("2**2**2**2**2", "exponent too large: 65536 (the limit is 10000)"),
        ("0.5 ** -20000", "exponent too large: -20000 (the limit is 10000)"),
        ("2 ** (10**30)", "exponent too large: an exponent that large (the limit is 10000)"),
        ("((2**100)**100)**100", "result too large: about 301030 digits (the limit is 10000)"),
        ("(9**9)**9**4", "result too large: about 56347 digits (the limit is 10000)"),
        ("9**5000 * 9**5000 * 9**5000", "result too large: more than about 10000 digits"),
        ("(1 + 1/3**1000) ** 25", "result too large: about 11928 digits (the limit is 10000)"),
        ("1e99999", "number out of range: 1e99999 (exponents are limited to ±10000)"),
        ("e ** 1000", "result too large for floating point"),
        ("pi * 10**308", "result too large for floating point"),
        ("pi + 10**400", "result too large for floating point"),
    ],
)
def test_huge_results_are_refused_quickly(expression: str, message: str) -> None:
    assert refusal(expression) == message


def test_trivial_bases_may_have_any_exponent() -> None:
    assert calculate("1 ** (10**30)") == "1"
    assert calculate("(-1) ** 100001") == "-1"
    assert calculate("0 ** 100000") == "0"
    assert calculate("0 ** 0") == "1"


# The LangChain tool


@pytest.fixture(scope="module")
def tool() -> BaseTool:
    return calculator_tool()


def test_tool_schema(tool: BaseTool) -> None:
    assert tool.name == "calculator"
    assert tool.description == (
        "Exact arithmetic: + - * / // % ** and parentheses, sqrt, abs, round, min, max, e.g. 1234 * (5 + 6)."
    )
    assert list(tool.args) == ["expression"]
    assert tool.args["expression"]["type"] == "string"
    assert tool.handle_tool_error is True


def test_tool_computes(tool: BaseTool) -> None:
    assert tool.invoke({"expression": "6*7"}) == "42"


def test_tool_returns_a_refusal_to_the_model_as_an_error_message(tool: BaseTool) -> None:
    message = tool.invoke({"type": "tool_call", "name": "calculator", "args": {"expression": "1/0"}, "id": "1"})
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert message.content == "division by zero"
    assert message.tool_call_id == "1"

    ok = tool.invoke({"type": "tool_call", "name": "calculator", "args": {"expression": "1/3"}, "id": "2"})
    assert ok.status == "success"
    assert ok.content == "1/3 ≈ 0.3333333333333333"
