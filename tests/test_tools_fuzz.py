"""Bad tool input never crashes an agent run: every input gives a result or a short error message for the model.

The tools are real (a real SQLite file, the real calculator); hypothesis generates the inputs, derandomized so a run
is repeatable. Only the chat model of the agent-loop tests is a fake (for control flow), labelled as such.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool

from ragapp.agent import run_agent
from ragapp.tools.calculator import CalculationError, calculate, calculator_tool
from ragapp.tools.search_documents import PassageLedger, search_documents_tool
from ragapp.tools.sql_query import MAX_NESTING, ReadOnlyDatabase, SqlRefused, sql_query_tool
from tests.test_agent import ScriptedChatModel, call

TIMEOUT_S = 1.0  # the SQL tool's timeout here; the worker is killed about a second after it
SQL_BOUND_S = TIMEOUT_S + 3.0  # per input, with room for a loaded machine
CALC_BOUND_S = 2.0

DEEP_PARENS = "SELECT " + "(" * 900 + "1" + ")" * 900
DEEP_SUBSELECTS = "SELECT " + "(SELECT " * 300 + "1" + ")" * 300
DEEP_NOTS = "SELECT " + "NOT " * 3000 + "1"
HUGE_POWER = "(10**9999) ** 1000.5"

FUZZ = settings(
    derandomize=True,  # the same inputs on every run: a failure can be reproduced
    database=None,  # nothing written to .hypothesis/
    deadline=None,  # the time bound is asserted per input below, with the tool's own limit
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadOnlyDatabase]:
    path = tmp_path_factory.mktemp("fuzz") / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL);
        CREATE TABLE secrets (id INTEGER PRIMARY KEY, token TEXT);
        INSERT INTO orders VALUES (1, 'Ada', 12.5), (2, 'Grace', 30.0);
        INSERT INTO secrets VALUES (1, 'hunter2');
        """
    )
    conn.close()
    with ReadOnlyDatabase(f"sqlite:///{path}", tables=["orders"], max_rows=5, timeout_s=TIMEOUT_S) as db:
        yield db


def invoke(tool: BaseTool, **args: str) -> ToolMessage:
    message = tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "call-1"})
    assert isinstance(message, ToolMessage)
    return message


def assert_answered(message: ToolMessage) -> None:
    """A result, or a short error message for the model; never an exception (invoke would have raised)."""
    assert isinstance(message.content, str) and message.content.strip()
    if message.status == "error":
        assert len(message.content) < 2000
        assert "Traceback" not in message.content


# -- defect 3: the inputs of the report ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (DEEP_PARENS, f"the SQL nests parentheses 900 levels deep (the limit is {MAX_NESTING})"),
        (DEEP_SUBSELECTS, f"the SQL nests parentheses 300 levels deep (the limit is {MAX_NESTING})"),
        (DEEP_NOTS, "the SQL is nested too deeply to check: write it with fewer levels"),
    ],
    ids=["parentheses", "sub-selects", "nots"],
)
def test_deeply_nested_sql_is_refused_with_a_message(shop: ReadOnlyDatabase, sql: str, message: str) -> None:
    with pytest.raises(SqlRefused, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        shop.query(sql)
    reply = invoke(sql_query_tool(shop), query=sql)
    assert reply.status == "error" and reply.content.startswith(message)


def test_nesting_below_the_limit_still_runs(shop: ReadOnlyDatabase) -> None:
    def nested(levels: int) -> str:  # count(*) is the last level
        return "SELECT " + "(" * (levels - 1) + "count(*)" + ")" * (levels - 1) + " FROM orders"

    assert shop.query(nested(MAX_NESTING)).rows == [(2,)]
    with pytest.raises(SqlRefused, match=f"^the SQL nests parentheses {MAX_NESTING + 1} levels deep"):
        shop.query(nested(MAX_NESTING + 1))


def test_overflowing_power_is_an_error_message() -> None:
    with pytest.raises(CalculationError, match="^result too large for floating point$"):
        calculate(HUGE_POWER)
    reply = invoke(calculator_tool(), expression=HUGE_POWER)
    assert (reply.status, reply.content) == ("error", "result too large for floating point")
    assert calculate("(10**9999) ** -1000.5") == "0 (approximate)"  # below the smallest float, as math.pow gives


def test_an_overlong_search_query_is_refused_back_to_the_model() -> None:
    # FAKE retriever (control flow only): it must not be reached.
    tool = search_documents_tool(lambda q: pytest.fail("searched"), PassageLedger())
    reply = invoke(tool, query="word " * 1000)
    assert (reply.status, reply.content) == ("error", "the query is too long: 5,000 characters (the limit is 2,000)")


# -- defect 3: the agent run goes on ------------------------------------------------------------------------------


def test_the_agent_run_goes_on_after_the_reported_inputs(shop: ReadOnlyDatabase) -> None:
    # FAKE chat model (control flow only): it sends the report's inputs to the real tools, then answers.
    model = ScriptedChatModel(
        script=[
            call("sql_query", query=DEEP_PARENS),
            call("calculator", expression=HUGE_POWER),
            call("calculator", expression="6 * 7"),
            AIMessage("42"),
        ]
    )
    result = run_agent(model, [sql_query_tool(shop), calculator_tool()], "task", max_steps=6)
    observations = [s for s in result.steps if s.kind == "observation"]
    assert [(s.tool, s.error) for s in observations] == [
        ("sql_query", True),
        ("calculator", True),
        ("calculator", False),
    ]
    assert "levels deep" in observations[0].content
    assert observations[2].content == "42"
    assert result.finished and result.answer == "42"
    assert isinstance(model.seen[1][-1], ToolMessage) and model.seen[1][-1].status == "error"


def crashing_tool() -> StructuredTool:
    """FAKE tool (control flow only): fails the way no guard foresaw, without a ToolException."""

    def parse(text: str) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    return StructuredTool.from_function(parse, name="parse", description="parses", handle_tool_error=True)


def test_an_unforeseen_tool_crash_becomes_an_observation() -> None:
    # FAKE chat model (control flow only).
    model = ScriptedChatModel(
        script=[call("parse", text="((((("), call("calculator", expression="2+2"), AIMessage("4")]
    )
    result = run_agent(model, [crashing_tool(), calculator_tool()], "task", max_steps=5)
    crash = result.steps[1]
    assert (crash.kind, crash.tool, crash.error) == ("observation", "parse", True)
    assert crash.content == "parse failed on this input (RecursionError); try a simpler input or another tool"
    fed_back = model.seen[1][-1]
    assert isinstance(fed_back, ToolMessage) and fed_back.content == crash.content
    assert result.finished and result.answer == "4" and result.steps[3].content == "4"


# -- fuzzing ----------------------------------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["0", "0.0", "1e999", "1e-999", "9" * 400, "0." + "0" * 300 + "1", "1_000", "1e10000", "pi", "e"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
_ARITHMETIC = st.recursive(
    _NUMBERS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "^", "×", "÷", "−"]), inner).map(
            lambda t: f"({t[0]}) {t[1]} ({t[2]})"
        ),
        st.tuples(st.sampled_from(["sqrt", "abs", "round", "floor", "ceil", "min", "max", "-", ""]), inner).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        st.tuples(inner, inner).map(lambda t: f"round({t[0]}, {t[1]})"),
    ),
    max_leaves=12,
)
_NESTED_CALC = st.tuples(st.sampled_from(["(", "sqrt(", "-(", "abs(", "2**("]), st.integers(1, 2000)).map(
    lambda t: t[0] * t[1] + "1" + ")" * t[1]
)
_NASTY = st.sampled_from(
    [
        HUGE_POWER,
        "10**10**10",
        "2**-99999",
        "(2**0.5)**99999",
        "9**9999 * 9**9999",
        "round(1/3, 9999)",
        "sqrt(10**9999) ** 3.5",
        "(1/7) ** (1/9999)",
        "1" * 5000,
        "\x00",
        "1\x002",
        "__import__('os')",
        "().__class__",
        "'a' * 10**9",
        "lambda: 1",
        "[1] * 10**9",
        "1 if 1 else 2",
        "\u202e1+1",
        "1 = ",
        "",
    ]
)
CALCULATOR_INPUTS = st.one_of(_ARITHMETIC, _NESTED_CALC, _NASTY, st.text(max_size=300))


@settings(FUZZ, max_examples=400)
@given(expression=CALCULATOR_INPUTS)
def test_calculator_answers_every_input_quickly(expression: str) -> None:
    started = time.monotonic()
    try:
        assert isinstance(calculate(expression), str)
    except CalculationError as e:
        assert str(e)
    assert time.monotonic() - started < CALC_BOUND_S, expression[:200]


_SQL_WORDS = [
    "SELECT", "FROM", "orders", "secrets", "sqlite_master", "WHERE", "(", ")", "(", ")", ",", "*", "1", "'x'", "NULL",
    "UNION", "ALL", "WITH", "RECURSIVE", "c(x)", "AS", "JOIN", "ON", "=", "+", "-", "||", "NOT", "CASE", "WHEN",
    "THEN", "END", "LIMIT", "ORDER BY", "GROUP BY", "total", "id", "count(*)", ";", "--", "/*", "*/", "?", ":a",
    "$1", "\x00", "ü", "😀", "x'00'", "1e999", "9223372036854775808", "printf('%.*c', 999999999, 'x')",
    "randomblob(999999999)", "zeroblob(999999999)", "fts3_tokenizer('simple')", "load_extension('x')",
    "ATTACH", "PRAGMA", "DELETE", "INSERT INTO", "json_each('[1]')", "replace(", "group_concat(", "substr(",
    "sqlite_version()", "like", "'%a%a%a%a%b'", "glob", "IN", "EXISTS", "VALUES", "DROP TABLE",
]  # fmt: skip
_SQL_FRAGMENTS = st.lists(st.sampled_from(_SQL_WORDS), max_size=40).map(" ".join)
_SQL_SELECTS = st.tuples(
    st.sampled_from(["SELECT ", "SELECT count(*), ", "WITH t AS (SELECT 1) SELECT "]), _SQL_FRAGMENTS
).map("".join)
_NESTED_SQL = st.tuples(
    st.sampled_from(["(", "(SELECT ", "NOT ", "CASE WHEN 1 THEN ", "-", "abs(", " UNION SELECT 1"]),
    st.integers(1, 1500),
).map(lambda t: "SELECT " + t[0] * t[1] + "1" + {"(": ")", "(SELECT ": ")", "abs(": ")"}.get(t[0], "") * t[1]
     + (" END" * t[1] if t[0].startswith("CASE") else ""))  # fmt: skip
_NASTY_SQL = st.sampled_from(
    [
        DEEP_PARENS,
        DEEP_SUBSELECTS,
        DEEP_NOTS,
        "SELECT length(printf('%.*c', 999999999, 'x'))",
        "SELECT length(randomblob(999999999))",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        "SELECT '" + "a" * 30_000 + "'",
        "SELECT " + " OR ".join(f"id = {i}" for i in range(3000)) + " FROM orders",
        "SELECT " + ", ".join(["1"] * 3000),
        "SELECT 1" + " UNION SELECT 1" * 100,
        "SELECT upper(" * 20 + "'x'" + ")" * 20 + " FROM orders",
    ]
)
_SQL_VALUES = st.one_of(
    st.sampled_from(["id", "total", "customer", "NULL", "x'00ff'", "1e999", "-0.0", "9223372036854775807"]),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.text(max_size=20).map(lambda text: "'" + text.replace("'", "''") + "'"),  # unicode, NULs, newlines
)
_SQL_EXPRESSIONS = st.recursive(
    _SQL_VALUES,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%", "||", "=", "<", "AND", "OR", "LIKE"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(
            st.sampled_from(["abs", "upper", "length", "hex", "quote", "typeof", "unicode", "json_quote", "round"]),
            inner,
        ).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"coalesce({t[0]}, {t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} END"),
    ),
    max_leaves=8,
)
_VALID_SQL = st.tuples(_SQL_EXPRESSIONS, _SQL_EXPRESSIONS, _SQL_EXPRESSIONS).map(
    lambda t: f"SELECT {t[0]}, {t[1]} FROM orders WHERE {t[2]} OR 1 LIMIT 3"
)
SQL_INPUTS = st.one_of(_VALID_SQL, _SQL_SELECTS, _NESTED_SQL, _NASTY_SQL, st.text(max_size=200))


@pytest.mark.slow  # about 150 SQLite child processes
@settings(FUZZ, max_examples=150)
@given(sql=SQL_INPUTS)
def test_sql_tool_answers_every_input_within_its_timeout(shop: ReadOnlyDatabase, sql: str) -> None:
    tool = sql_query_tool(shop)
    started = time.monotonic()
    reply = invoke(tool, query=sql)
    assert_answered(reply)
    assert time.monotonic() - started < SQL_BOUND_S, sql[:200]
    assert "hunter2" not in reply.content
