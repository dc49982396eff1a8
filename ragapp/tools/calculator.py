"""Exact arithmetic for an agent, because language models get arithmetic wrong.

The expression is parsed with `ast.parse(..., mode="eval")` and walked against an explicit allow-list of nodes;
nothing the model writes is ever given to `eval`, `exec` or `compile` as code. Numbers are `Fraction`s, so
`0.1 + 0.2` is exactly `0.3`; only the constants pi and e, square roots of non-squares and powers that are not
rational are floats, and any result that involves one is marked "(approximate)".

Before parsing, the characters models use for operators are rewritten to Python's: "^" is power ("**"), "×" is "*",
"÷" is "/" and "−" (the Unicode minus sign) is "-". None of them means anything else in an allowed expression
(strings are refused), so a plain character replacement is exact.

Semantics are Python's: `-2**2` is -4, `//` and `%` floor towards minus infinity, `round` rounds halves to even.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import sys
from collections.abc import Callable
from decimal import Context, Decimal
from fractions import Fraction
from typing import NoReturn

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

__all__ = ["CalculationError", "calculate", "calculator_tool"]

MAX_LENGTH = 1000
MAX_DEPTH = 100
MAX_EXPONENT = 10_000
MAX_DIGITS = 10_000
# A numerator or denominator longer than MAX_DIGITS decimal digits (with a bit of slack) is refused.
_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10)) + 1

DESCRIPTION = "Exact arithmetic: + - * / // % ** and parentheses, sqrt, abs, round, min, max, e.g. 1234 * (5 + 6)."

_ALIASES = str.maketrans({"^": "**", "×": "*", "÷": "/", "−": "-"})

# Approximate values are floats; exact ones are Fractions.
Number = Fraction | float

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
# name -> (fewest, most) positional arguments; None means no upper bound.
_ARITY: dict[str, tuple[int, int | None]] = {
    "abs": (1, 1),
    "ceil": (1, 1),
    "floor": (1, 1),
    "max": (1, None),
    "min": (1, None),
    "round": (1, 2),
    "sqrt": (1, 1),
}
_FUNCTION_LIST = ", ".join(sorted(_ARITY))

_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_REFUSED_BINOPS: dict[type[ast.operator], str] = {
    ast.BitAnd: "bitwise operator (&)",
    ast.BitOr: "bitwise operator (|)",
    ast.BitXor: "bitwise operator (xor)",
    ast.LShift: "bit shift (<<)",
    ast.RShift: "bit shift (>>)",
    ast.MatMult: "matrix multiplication (@)",
}
_REFUSED_NODES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript ([...])",
    ast.Slice: "slice",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
    ast.List: "list",
    ast.Set: "set",
    ast.Dict: "dict",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator (and/or)",
    ast.NamedExpr: "assignment (:=)",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.IfExp: "conditional expression (if/else)",
    ast.Starred: "starred argument (*)",
    ast.keyword: "keyword argument (pass arguments by position)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}
_THOUSANDS = re.compile(r"\d,\d{3}(?!\d)")
# ln of the largest float and of the smallest positive (subnormal) one.
_LN_FLOAT_MAX = Decimal(math.log(sys.float_info.max))
_LN_FLOAT_TINY = Decimal(math.log(5e-324))


class CalculationError(ValueError):
    """The expression was refused or cannot be computed; the message says why, for the model to fix it."""


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly; the text is what the model reads back."""
    source = _prepare(expression)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"could not parse: {exc.msg}") from None
    except ValueError as exc:  # e.g. "source code string cannot contain null bytes"
        raise CalculationError(f"could not parse: {exc}") from None
    except (RecursionError, MemoryError):
        raise CalculationError(f"expression nested too deeply (the limit is {MAX_DEPTH} levels)") from None
    _check(tree, source)
    try:
        return _format(_Evaluator(source).value_of(tree.body))
    except CalculationError:
        raise
    except (ArithmeticError, ValueError, RecursionError, MemoryError) as exc:
        # A case the checks above missed (decimal.Overflow is an ArithmeticError): still an answer for the model.
        raise CalculationError(f"cannot compute this expression ({type(exc).__name__}); try smaller numbers") from None


class _CalculatorInput(BaseModel):
    expression: str = Field(description="An arithmetic expression, e.g. 1234 * (5 + 6)")


def calculator_tool() -> BaseTool:
    """The calculator as a LangChain tool; a refusal goes back to the model as an error message it can act on."""

    def calculator(expression: str) -> str:
        try:
            return calculate(expression)
        except CalculationError as exc:
            raise ToolException(str(exc)) from exc

    return StructuredTool.from_function(
        func=calculator,
        name="calculator",
        description=DESCRIPTION,
        args_schema=_CalculatorInput,
        handle_tool_error=True,
    )


def _prepare(expression: str) -> str:
    """Models often end with "=" and use typographic operators; accept those, refuse what cannot be small."""
    if not isinstance(expression, str):
        raise CalculationError(f"the expression must be text, not {type(expression).__name__}")
    text = expression.strip()
    if text.endswith("="):
        text = text[:-1].rstrip()
    if not text:
        raise CalculationError("empty expression")
    if len(text) > MAX_LENGTH:
        raise CalculationError(f"expression too long: {len(text)} characters (the limit is {MAX_LENGTH})")
    return text.translate(_ALIASES)


def _check(tree: ast.Expression, source: str) -> None:
    """Refuse every node outside the allow-list before computing anything, so a refusal costs nothing.

    Iterative, so deep input cannot exhaust the stack here. The left operand of a binary operator counts as the same
    level (the evaluator walks that spine in a loop), so a long sum like 1+2+...+400 is not "deep".
    """
    called: set[int] = set()  # ids of Name nodes that are the function of a call
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CalculationError(f"expression nested too deeply (the limit is {MAX_DEPTH} levels)")
        _check_node(node, source, called)
        for child in ast.iter_child_nodes(node):
            same_level = isinstance(node, ast.BinOp) and child is node.left
            stack.append((child, depth if same_level else depth + 1))


def _check_node(node: ast.AST, source: str, called: set[int]) -> None:
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            _refuse(_REFUSED_BINOPS.get(type(node.op), type(node.op).__name__))
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            _refuse("boolean operator (not)")
        if isinstance(node.op, ast.Invert):
            _refuse("bitwise operator (~)")
    elif isinstance(node, ast.Constant):
        _check_constant(node)
    elif isinstance(node, ast.Name):
        if node.id in _ARITY and id(node) not in called:
            raise CalculationError(f"{node.id} is a function: call it, e.g. {node.id}(2)")
        if node.id not in _ARITY and node.id not in _CONSTANTS:
            raise CalculationError(
                f"unknown name {node.id!r}: the names are the constants pi and e and the functions {_FUNCTION_LIST}"
            )
    elif isinstance(node, ast.Call):
        _check_call(node, source, called)
    elif isinstance(node, ast.Tuple):
        segment = ast.get_source_segment(source, node) or ""
        if _THOUSANDS.search(segment):
            raise CalculationError("thousands separators are not allowed: write 1234, not 1,234")
        _refuse("tuple (a comma outside a function call)")
    elif isinstance(node, (ast.operator, ast.unaryop, ast.Load)):
        pass  # operators were checked with their BinOp/UnaryOp; Load is the context of an allowed Name
    else:
        _refuse(_describe(node))


def _check_constant(node: ast.Constant) -> None:
    value = node.value
    if isinstance(value, bool) or value is None or value is Ellipsis:
        _refuse(repr(value))
    if isinstance(value, str):
        _refuse("string")
    if isinstance(value, bytes):
        _refuse("bytes")
    if isinstance(value, complex):
        _refuse("complex number")
    if not isinstance(value, (int, float)):
        _refuse(type(value).__name__)


def _check_call(node: ast.Call, source: str, called: set[int]) -> None:
    func = node.func
    if not isinstance(func, ast.Name):
        if type(func) in _REFUSED_NODES:
            _refuse(_describe(func))
        _refuse(f"call of {ast.get_source_segment(source, func) or type(func).__name__}")
    if func.id in _CONSTANTS:
        raise CalculationError(f"{func.id} is a constant, not a function")
    if func.id not in _ARITY:
        raise CalculationError(f"unknown function {func.id!r}: the functions are {_FUNCTION_LIST}")
    if node.keywords:
        _refuse(_describe(node.keywords[0]))
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            _refuse(_describe(arg))
    fewest, most = _ARITY[func.id]
    count = len(node.args)
    if count < fewest or (most is not None and count > most):
        if most is None:
            wanted = f"at least {fewest} argument{'s' if fewest > 1 else ''}"
        elif fewest == most:
            wanted = f"{fewest} argument{'s' if fewest > 1 else ''}"
        else:
            wanted = f"{fewest} or {most} arguments"
        raise CalculationError(f"{func.id}() takes {wanted}, got {count}")
    called.add(id(func))


def _describe(node: ast.AST) -> str:
    what = _REFUSED_NODES.get(type(node), type(node).__name__)
    if isinstance(node, ast.Attribute):
        what += f" (.{node.attr})"
    elif isinstance(node, ast.keyword) and node.arg:
        what = f"keyword argument ({node.arg}=...; pass arguments by position)"
    return what


def _refuse(what: str) -> NoReturn:
    raise CalculationError(f"not allowed in an expression: {what}")


class _Evaluator:
    """Computes a tree that `_check` accepted; exact unless an approximate value gets involved."""

    def __init__(self, source: str) -> None:
        self.source = source

    def value_of(self, node: ast.expr) -> Number:
        if isinstance(node, ast.BinOp):
            return self._binop_chain(node)
        if isinstance(node, ast.UnaryOp):
            value = self.value_of(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return _CONSTANTS[node.id]
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            return _FUNCTIONS[node.func.id](*(self.value_of(arg) for arg in node.args))
        raise AssertionError(f"unchecked node {type(node).__name__}")  # pragma: no cover

    def _binop_chain(self, node: ast.BinOp) -> Number:
        """Walk the left spine in a loop, so a long chain of + or * needs no recursion."""
        chain: list[ast.BinOp] = []
        left: ast.expr = node
        while isinstance(left, ast.BinOp):
            chain.append(left)
            left = left.left
        value = self.value_of(left)
        for binop in reversed(chain):
            value = _arith(type(binop.op), value, self.value_of(binop.right))
        return value

    def _constant(self, node: ast.Constant) -> Number:
        if isinstance(node.value, int):
            return _exact(Fraction(node.value))
        # A float literal is read from its text, so 0.1 is exactly 1/10 rather than the nearest float.
        text = (ast.get_source_segment(self.source, node) or repr(node.value)).replace("_", "")
        exponent = re.search(r"[eE]([+-]?\d+)$", text)
        if exponent and abs(int(exponent.group(1))) > MAX_DIGITS:
            raise CalculationError(f"number out of range: {text} (exponents are limited to ±{MAX_DIGITS})")
        return _exact(Fraction(text))


def _exact(value: Fraction) -> Fraction:
    """Bound every exact result, so repeated multiplication cannot grow numbers without limit."""
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise CalculationError(f"result too large: more than about {MAX_DIGITS} digits")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise CalculationError("result too large for floating point")
    return value


def _to_float(value: Number | Decimal) -> float:
    try:
        return _finite(float(value))
    except OverflowError:
        raise CalculationError("result too large for floating point") from None


_EXACT_OPS: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}
_FLOAT_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _arith(op: type[ast.operator], a: Number, b: Number) -> Number:
    if op in (ast.Div, ast.FloorDiv, ast.Mod) and b == 0:
        raise CalculationError("division by zero")
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if op is ast.Pow:
            return _power(a, b)
        return _exact(_EXACT_OPS[op](a, b))
    fa, fb = _to_float(a), _to_float(b)
    if op is ast.Pow:
        return _float_power(fa, fb)
    try:
        return _finite(_FLOAT_OPS[op](fa, fb))
    except OverflowError:
        raise CalculationError("result too large for floating point") from None


def _power(base: Fraction, exponent: Fraction) -> Number:
    """Exact when the result is rational; refuse, before computing, a result too large to be useful."""
    if exponent.denominator == 1:
        return _int_power(base, exponent.numerator)
    if base < 0:
        raise CalculationError("a negative number raised to a fractional power is not a real number")
    if base == 0:
        if exponent < 0:
            raise CalculationError("division by zero")
        return Fraction(0)
    if base == 1:
        return Fraction(1)
    # A rational base whose q-th root is rational gives an exact result for the exponent p/q: 8 ** (1/3) is 2.
    q = exponent.denominator
    if q <= max(base.numerator.bit_length(), base.denominator.bit_length()):
        num, den = _iroot(base.numerator, q), _iroot(base.denominator, q)
        if num**q == base.numerator and den**q == base.denominator:
            return _int_power(Fraction(num, den), exponent.numerator)
    power = _to_float(exponent)
    try:
        approx_base = float(base)
    except OverflowError:
        approx_base = math.inf
    if approx_base == 0 or math.isinf(approx_base):
        # The base is outside a float's range but the result may not be: exp(y * ln x) in 40-digit Decimal.
        # The logarithm is checked against a float's range first, so exp() can neither overflow nor underflow.
        ctx = Context(prec=40)
        x = ctx.divide(Decimal(base.numerator), Decimal(base.denominator))
        y = ctx.divide(Decimal(exponent.numerator), Decimal(exponent.denominator))
        log_result = ctx.multiply(y, ctx.ln(x))
        if log_result > _LN_FLOAT_MAX:
            raise CalculationError("result too large for floating point")
        if log_result < _LN_FLOAT_TINY:
            return 0.0  # smaller than the smallest float, as math.pow would give
        return _to_float(ctx.exp(log_result))
    return _float_power(approx_base, power)


def _int_power(base: Fraction, exponent: int) -> Fraction:
    if base == 0 and exponent < 0:
        raise CalculationError("division by zero")
    if base == 0 or base == 1:
        return Fraction(1) if exponent == 0 else base
    if base == -1:
        return Fraction(1 if exponent % 2 == 0 else -1)
    if abs(exponent) > MAX_EXPONENT:
        shown = exponent if abs(exponent) < 10**20 else "an exponent that large"
        raise CalculationError(f"exponent too large: {shown} (the limit is {MAX_EXPONENT})")
    digits = abs(exponent) * math.log10(max(abs(base.numerator), base.denominator))
    if digits > MAX_DIGITS + 1:
        raise CalculationError(f"result too large: about {digits:.0f} digits (the limit is {MAX_DIGITS})")
    return _exact(base**exponent)


def _float_power(base: float, exponent: float) -> float:
    if base == 0 and exponent < 0:
        raise CalculationError("division by zero")
    if base < 0 and not exponent.is_integer():
        raise CalculationError("a negative number raised to a fractional power is not a real number")
    try:
        return _finite(math.pow(base, exponent))
    except OverflowError:
        raise CalculationError("result too large for floating point") from None


def _iroot(n: int, k: int) -> int:
    """The integer k-th root of n >= 0, rounded down (Newton's method from above)."""
    if n < 2:
        return n
    x = 1 << -(-n.bit_length() // k)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculationError("square root of a negative number is not a real number")
    if isinstance(x, float):
        return math.sqrt(x)
    num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
    if num * num == x.numerator and den * den == x.denominator:
        return Fraction(num, den)
    # Not a rational square: scale by an even power of two so the integer root keeps ~100 bits, well over a float's 53.
    shift = max(0, 200 + x.denominator.bit_length() - x.numerator.bit_length())
    shift += shift % 2
    return _to_float(Fraction(math.isqrt((x.numerator << shift) // x.denominator), 1 << (shift // 2)))


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return Fraction(round(x)) if isinstance(x, Fraction) else float(round(x))
    if not isinstance(ndigits, Fraction) or ndigits.denominator != 1:
        raise CalculationError("round()'s second argument (the number of digits) must be a whole number")
    places = ndigits.numerator
    if abs(places) > MAX_DIGITS:
        raise CalculationError(f"round() to {places} digits: the limit is {MAX_DIGITS}")
    return _exact(round(x, places)) if isinstance(x, Fraction) else _finite(round(x, places))


def _floor(x: Number) -> Number:
    return Fraction(math.floor(x)) if isinstance(x, Fraction) else float(math.floor(x))


def _ceil(x: Number) -> Number:
    return Fraction(math.ceil(x)) if isinstance(x, Fraction) else float(math.ceil(x))


_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": abs,
    "ceil": _ceil,
    "floor": _floor,
    "max": lambda *xs: max(xs),
    "min": lambda *xs: min(xs),
    "round": _round,
    "sqrt": _sqrt,
}


def _format(value: Number) -> str:
    """Integers and terminating decimals as themselves; other rationals as p/q with a decimal approximation."""
    if isinstance(value, float):
        shown = str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
        return f"{shown} (approximate)"
    num, den = value.numerator, value.denominator
    if den == 1:
        return _int_str(num)
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest == 1:
        places = max(twos, fives)
        digits = _int_str(abs(num) * (10**places // den)).rjust(places + 1, "0")
        return f"{'-' if num < 0 else ''}{digits[:-places]}.{digits[-places:]}"
    try:
        approx = float(value)
    except OverflowError:
        approx = 0.0
    # Beyond a float's range (either way), Decimal still gives the leading digits.
    shown = repr(approx) if approx else format(Context(prec=17).divide(Decimal(num), Decimal(den)), ".16e")
    return f"{_int_str(num)}/{_int_str(den)} ≈ {shown}"


def _int_str(n: int) -> str:
    """str() of an int refuses more than 4300 digits by default; Decimal has no such limit."""
    return str(Decimal(n))
