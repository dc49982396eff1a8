"""The agent loop's control flow, with scripted models (fakes, for control flow only), and the text protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import StructuredTool, ToolException
from pydantic import Field

from ragapp.agent import Step, run_agent
from ragapp.app import App
from ragapp.errors import ScoringUnsupported, UsageError
from ragapp.generators import GenerationConfig
from ragapp.react_chat import ReActChatModel, parse_reply
from ragapp.search import SearchHit
from ragapp.tools.search_documents import PassageLedger, search_documents_tool
from tests.test_generator_openai import FakeServer, completion, reply

pytestmark = pytest.mark.usefixtures("database")


class ScriptedChatModel(BaseChatModel):
    """FAKE chat model for control-flow tests: replies from a script, records what it was sent."""

    script: list[AIMessage]
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        self.bound[:] = [t.name for t in tools]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        reply = self.script[min(len(self.seen), len(self.script)) - 1]
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy())])


class ScriptedGenerator:
    """FAKE ragapp Generator for control-flow tests: returns scripted completions, records the prompts."""

    model_id = "scripted"
    device = "cpu"

    def __init__(self, replies: list[str], context_window: int = 2048) -> None:
        self.replies = replies
        self.context_window = context_window
        self.prompts: list[list[dict[str, str]]] = []
        self.stops: list[list[str]] = []

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(len(m["content"]) for m in messages) // 4  # a rough stand-in for a tokenizer

    def generate(self, messages: Sequence[dict[str, str]], config: GenerationConfig) -> str:
        self.prompts.append(list(messages))
        self.stops.append(list(config.stop))
        return self.replies[min(len(self.prompts), len(self.replies)) - 1]


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"id-{name}-{len(args)}", "type": "tool_call"}])


def multiply_tool() -> StructuredTool:
    def multiply(expression: str) -> str:
        a, b = (int(x) for x in expression.split("*"))
        return str(a * b)

    return StructuredTool.from_function(multiply, name="multiply", description="a * b", handle_tool_error=True)


def failing_tool() -> StructuredTool:
    def lookup(query: str) -> str:
        raise ToolException(f"table {query!r} is not allowed")

    return StructuredTool.from_function(lookup, name="lookup", description="looks up", handle_tool_error=True)


def hit(chunk_id: int, text: str) -> SearchHit:
    return SearchHit(
        chunk_id, 1.0 / chunk_id, text, f"/docs/file{chunk_id}.md", None, f"Part {chunk_id}", None, None, 0, 9
    )


# -- the loop ------------------------------------------------------------------------------------


def test_the_chosen_tool_runs_and_its_result_reaches_the_model() -> None:
    model = ScriptedChatModel(script=[call("multiply", expression="6*7"), AIMessage("It is 42.")])
    steps: list[Step] = []
    result = run_agent(model, [multiply_tool(), failing_tool()], "6 times 7?", max_steps=4, on_step=steps.append)
    assert model.bound == ["multiply", "lookup"]
    assert [(s.kind, s.tool) for s in result.steps] == [
        ("tool_call", "multiply"),
        ("observation", "multiply"),
        ("answer", None),
    ]
    assert result.steps[0].args == {"expression": "6*7"}
    assert result.steps[1].content == "42" and not result.steps[1].error
    assert steps == result.steps  # on_step saw every step, in order
    second_call = model.seen[1]
    assert isinstance(second_call[0], SystemMessage)
    assert isinstance(second_call[-1], ToolMessage) and second_call[-1].content == "42"
    assert result.finished and result.answer == "It is 42."
    assert result.timings["model_calls"] == 2 and result.timings["tool_calls"] == 1


def test_the_step_limit_ends_a_run_that_never_answers() -> None:
    model = ScriptedChatModel(script=[call("multiply", expression="2*2")])
    result = run_agent(model, [multiply_tool()], "loop forever", max_steps=3)
    assert len(model.seen) == 3
    assert not result.finished and result.answer == ""
    assert [s.kind for s in result.steps].count("tool_call") == 3
    assert result.timings["model_calls"] == 3


def test_a_tool_error_goes_back_to_the_model_which_recovers() -> None:
    model = ScriptedChatModel(
        script=[call("lookup", query="secrets"), call("multiply", expression="3*3"), AIMessage("9")]
    )
    result = run_agent(model, [multiply_tool(), failing_tool()], "task", max_steps=5)
    refused = result.steps[1]
    assert refused.kind == "observation" and refused.error
    assert "table 'secrets' is not allowed" in refused.content
    fed_back = model.seen[1][-1]
    assert isinstance(fed_back, ToolMessage) and "not allowed" in str(fed_back.content)
    assert result.finished and result.answer == "9"


def test_an_unknown_tool_or_bad_arguments_are_reported_to_the_model() -> None:
    model = ScriptedChatModel(
        script=[
            call("eval", code="1+1"),
            call("multiply", wrong="2*3"),
            call("multiply", expression="2*3"),
            AIMessage("6"),
        ]
    )
    result = run_agent(model, [multiply_tool()], "task", max_steps=5)
    observations = [s for s in result.steps if s.kind == "observation"]
    assert observations[0].error and "eval is not a valid tool" in observations[0].content
    assert observations[1].error and "expression" in observations[1].content
    assert observations[2].content == "6" and not observations[2].error
    assert result.answer == "6"


def test_passages_keep_one_number_across_searches_and_cited_ones_are_marked() -> None:
    found = {"first": [hit(1, "alpha"), hit(2, "beta")], "second": [hit(2, "beta"), hit(3, "gamma")]}
    ledger = PassageLedger()
    tool = search_documents_tool(lambda q: found[q], ledger)
    model = ScriptedChatModel(
        script=[
            call("search_documents", query="first"),
            call("search_documents", query="second"),
            AIMessage("See [3]."),
        ]
    )
    result = run_agent(model, [tool], "task", max_steps=4, ledger=ledger)
    second = result.steps[3].content
    assert "[2] (file2.md, Part 2) beta" in second and "[3] (file3.md, Part 3) gamma" in second
    assert [(c.n, c.chunk_id, c.cited) for c in result.citations] == [(1, 1, False), (2, 2, False), (3, 3, True)]


def test_an_empty_search_query_is_refused_back_to_the_model() -> None:
    tool = search_documents_tool(lambda q: pytest.fail("searched"), PassageLedger())
    message = tool.invoke({"type": "tool_call", "name": "search_documents", "args": {"query": " "}, "id": "1"})
    assert message.status == "error" and "empty" in message.content


# -- the text protocol ---------------------------------------------------------------------------

PARAMS: dict[str, str | None] = {"calculator": "expression", "search_documents": "query", "both": None}


@pytest.mark.parametrize(
    ("text", "name", "args", "thought"),
    [
        ("Action: calculator\nAction Input: 1234 * 5678", "calculator", {"expression": "1234 * 5678"}, ""),
        (
            "I should compute.\nAction: calculator\nAction Input: `2+2`\nThe user then",
            "calculator",
            {"expression": "2+2"},
            "I should compute.",
        ),
        ('action: search_documents\naction input: "ingest --sync"', "search_documents", {"query": "ingest --sync"}, ""),
        ('Action: both\nAction Input: {"a": 1, "b": "x"}', "both", {"a": 1, "b": "x"}, ""),
        ("Action: calculator", "calculator", {"expression": ""}, ""),
    ],
)
def test_replies_naming_an_action_become_tool_calls(text: str, name: str, args: dict[str, Any], thought: str) -> None:
    message = parse_reply(text, PARAMS)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [(name, args)]
    assert message.content == thought


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Final Answer: 7006652", "7006652"),
        ("Thought: done.\nFinal Answer: It is 42 [1].", "It is 42 [1]."),
        (
            "Final Answer: use the calculator.\nAction: calculator\nAction Input: 1",
            "use the calculator.\nAction: calculator\nAction Input: 1",
        ),
        ("The answer is 12.", "The answer is 12."),
    ],
)
def test_other_replies_are_the_final_answer(text: str, answer: str) -> None:
    message = parse_reply(text, PARAMS)
    assert message.tool_calls == [] and message.content == answer


def test_the_protocol_shows_tools_examples_actions_and_observations() -> None:
    model = ReActChatModel(generator=ScriptedGenerator([]))
    model = model.bind_tools([multiply_tool(), search_documents_tool(lambda q: [], PassageLedger())])
    history = [
        SystemMessage("Be brief."),
        HumanMessage("6 times 7?"),
        call("multiply", expression="6*7"),
        ToolMessage("42", tool_call_id="id-multiply-1", name="multiply"),
    ]
    chat = model.to_messages(history)
    system = chat[0]["content"]
    assert system.startswith("Be brief.") and "multiply: a * b" in system and "search_documents: Search" in system
    examples = [m["content"] for m in chat if m["content"].startswith("Action: ")]
    assert "Action: search_documents\nAction Input: install ragapp" in examples  # its tool is bound
    assert not any("sql_query" in e or "calculator" in e for e in examples)  # theirs are not
    assert chat[-3:] == [
        {"role": "user", "content": "6 times 7?"},
        {"role": "assistant", "content": "Action: multiply\nAction Input: 6*7"},
        {"role": "user", "content": "Observation: 42"},
    ]


def test_the_text_protocol_runs_the_whole_loop_with_a_scripted_generator() -> None:
    generator = ScriptedGenerator(["Action: multiply\nAction Input: 1234*5678", "Final Answer: 7006652"])
    model = ReActChatModel(generator=generator, sampling=GenerationConfig(stop=["<end>"]))
    result = run_agent(model, [multiply_tool()], "What is 1234 * 5678?", max_steps=3)
    assert [(s.kind, s.tool) for s in result.steps][:2] == [("tool_call", "multiply"), ("observation", "multiply")]
    assert result.steps[1].content == "7006652"
    assert generator.prompts[1][-1] == {"role": "user", "content": "Observation: 7006652"}
    assert generator.stops[0] == ["<end>", "\nObservation:"]  # the model stops where the tool's result goes
    assert result.finished and result.answer == "7006652"


def test_old_tool_results_then_the_examples_give_way_to_fit_the_context_window() -> None:
    bound = ReActChatModel(generator=ScriptedGenerator([], context_window=500)).bind_tools([multiply_tool()])
    history = [
        HumanMessage("task"),
        call("multiply", expression="1*1"),
        ToolMessage("x" * 800, tool_call_id="id-multiply-1", name="multiply"),
        call("multiply", expression="2*2"),
        ToolMessage("y" * 800, tool_call_id="id-multiply-1", name="multiply"),
    ]
    chat = bound.fit(history, max_new_tokens=100)  # 400 tokens of prompt = 1600 characters here
    observations = [m["content"] for m in chat if m["content"].startswith("Observation")]
    assert observations == [
        "Observation: (an earlier result, left out to fit the context window)",
        "Observation: " + "y" * 800,
    ]
    with pytest.raises(UsageError, match="does not fit the 500-token context window"):
        bound.fit([HumanMessage("z" * 3000)], max_new_tokens=100)


class ScoringGenerator(ScriptedGenerator):
    """FAKE generator that also scores texts: the NLL of an action is looked up by its tool name."""

    def __init__(self, replies: list[str], nll: dict[str, float] | None) -> None:
        super().__init__(replies)
        self.nll = nll
        self.scored: list[str] = []

    def reference_nll(self, messages: Sequence[dict[str, str]], text: str) -> tuple[float, int]:
        if self.nll is None:
            raise ScoringUnsupported("no prompt log-probabilities")
        self.scored.append(text)
        return self.nll[text.split("\n")[0].removeprefix("Action: ")], 5


def test_the_likeliest_bound_tool_replaces_a_made_up_tool_name() -> None:
    generator = ScoringGenerator(
        ["Action: eval\nAction Input: 6*7", "Final Answer: 42"], {"multiply": 3.0, "lookup": 9.0}
    )
    model = ReActChatModel(generator=generator)
    result = run_agent(model, [multiply_tool(), failing_tool()], "6 times 7?", max_steps=3)
    assert generator.scored == ["Action: multiply\nAction Input: 6*7", "Action: lookup\nAction Input: 6*7"]
    assert [(s.kind, s.tool, s.args) for s in result.steps][:2] == [
        ("tool_call", "multiply", {"expression": "6*7"}),
        ("observation", "multiply", {}),
    ]
    assert result.steps[1].content == "42" and result.answer == "42"


def test_without_scoring_the_written_tool_name_stands_and_is_reported() -> None:
    generator = ScoringGenerator(["Action: eval\nAction Input: 6*7", "Final Answer: none"], None)
    result = run_agent(ReActChatModel(generator=generator), [multiply_tool(), failing_tool()], "task", max_steps=3)
    assert result.steps[0].tool == "eval"
    assert result.steps[1].error and "eval is not a valid tool" in result.steps[1].content


# -- App.agent's checks --------------------------------------------------------------------------


def test_app_agent_refuses_bad_requests_before_loading_a_model(tmp_path: Any) -> None:
    app = App(tmp_path / "ws")
    with pytest.raises(UsageError, match="unknown tool shell"):
        app.agent("task", tools=["shell"])
    with pytest.raises(UsageError, match="sql_query needs a database"):
        app.agent("task", tools=["sql_query"])
    with pytest.raises(UsageError, match="the task is empty"):
        app.agent("  ")
    with pytest.raises(UsageError, match="needs generation.backend = openai"):
        App(tmp_path / "ws", config={"agent": {"protocol": "tools"}}).agent("task", tools=["calculator"])
    assert app._generator is None


def test_native_tool_calls_go_over_the_openai_api(tmp_path: Any) -> None:
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
    }
    replies = [
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "assistant", "content": "It is 42 in all. It is 42 in all. It is 42 in all."},  # a loop
    ]
    server = FakeServer()  # FAKE OpenAI-compatible server: real HTTP, scripted replies
    chat: list[dict[str, Any]] = []

    def complete(handler: Any, body: dict[str, Any]) -> None:
        chat.append(body)
        answer = {**completion(""), "model": body["model"]}
        answer["choices"][0]["message"] = replies[len(chat) - 1]
        reply(handler, 200, answer)

    server.routes["POST /v1/chat/completions"] = complete
    try:
        config = {"generation": {"backend": "openai", "base_url": server.url, "repetition_penalty": 1.1}}
        result = App(tmp_path / "ws", config=config).agent("What is 6*7?", tools=["calculator"])
    finally:
        server.close()
    assert result.protocol == "tools" and result.model == "fake"
    first, second = chat
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    assert first["model"] == "fake" and first["temperature"] == 0.0
    assert first["presence_penalty"] == 1.0  # the penalty `ask` sends this server reaches the agent's calls too
    assert second["messages"][-1] == {"role": "tool", "content": "42", "tool_call_id": "call_1"}
    assert [(s.kind, s.tool, s.content) for s in result.steps] == [
        ("tool_call", "calculator", ""),
        ("observation", "calculator", "42"),
        ("answer", None, "It is 42 in all."),  # cut at its first repeat, as `ask` cuts it
    ]


def test_ragapp_agent_exits_1_when_the_step_limit_ends_the_run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from ragapp.agent import AgentResult
    from ragapp.cli import cli

    def stopped(self: App, task: str, **kwargs: Any) -> AgentResult:  # FAKE run: the CLI's handling is tested
        assert kwargs["max_steps"] == 2 and kwargs["tools"] == ["calculator"]
        steps = [
            Step("tool_call", tool="calculator", args={"expression": "1+1"}),
            Step("observation", "2", "calculator"),
        ]
        timings = {"total_s": 0.1, "model_calls": 2.0, "tool_calls": 1.0}
        return AgentResult(task, "", [], steps, False, "m", "react", timings)

    monkeypatch.setattr(App, "agent", stopped)
    run = CliRunner().invoke(cli, ["-w", str(tmp_path), "agent", "task", "--max-steps", "2", "--tool", "calculator"])
    assert run.exit_code == 1
    assert "No final answer within 2 steps." in run.output
