"""The tool-using agent: LangChain's `create_agent` loop over ragapp's tools, with a step limit and a trace.

The loop is LangChain's; ragapp adds the tools, a chat model for each protocol (native tool calls, or the
text protocol of `react_chat` for models without them), a trace of every step as it happens, and
citations: passages found by search_documents keep one number for the whole run. `run_task` assembles
all of that from the settings (it is `App.agent`); `run_agent` is the loop alone, for any chat model.

A tool that fails in a way it did not foresee (an exception other than its own ToolException) does not end
the run: the model gets an error observation naming the kind of failure, and the traceback goes to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    ModelCallLimitMiddleware,
    ToolCallRequest,
    ToolErrorMiddleware,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool

from ragapp.answer import Citation
from ragapp.config import DEFAULT_STOP, AgentSettings
from ragapp.errors import UsageError
from ragapp.generators import Generator
from ragapp.generators.base import GenerationConfig, cut_at_repeat
from ragapp.prompt import cited_numbers
from ragapp.tools import AGENT_TOOLS
from ragapp.tools.search_documents import PassageLedger

if TYPE_CHECKING:
    from ragapp.search import SearchHit

__all__ = ["AGENT_TOOLS", "AgentResult", "Step", "run_agent", "run_task"]

Search = Callable[[str, int], list["SearchHit"]]  # (query, k) -> passages, best first

log = logging.getLogger(__name__)

SYSTEM = (
    "You complete the user's task with the tools. Look facts up with the tools instead of guessing, use the "
    "calculator for arithmetic, and cite passages from search_documents by their numbers, like [1]. "
    "Answer briefly."
)


@dataclass
class Step:
    """One event of a run: the model calls a tool, a tool answers, or the model gives its final answer."""

    kind: Literal["tool_call", "observation", "answer"]
    content: str = ""  # the model's thought (tool_call), the tool's output (observation), or the answer
    tool: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    error: bool = False  # observation: the tool refused or failed; the message went back to the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AgentResult:
    task: str
    answer: str
    citations: list[Citation]
    steps: list[Step]
    finished: bool  # False: the step limit ended the run before a final answer
    model: str
    protocol: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tool_calls(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "tool_call"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "answer": self.answer,
            "finished": self.finished,
            "citations": [vars(c) for c in self.citations],
            "steps": [s.to_dict() for s in self.steps],
            "model": self.model,
            "protocol": self.protocol,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def _steps(message: Any) -> list[Step]:
    if isinstance(message, ToolMessage):
        return [Step("observation", str(message.content), tool=message.name, error=message.status == "error")]
    if isinstance(message, AIMessage) and message.tool_calls:
        thought = str(message.content).strip()
        return [Step("tool_call", thought, tool=c["name"], args=dict(c["args"])) for c in message.tool_calls]
    if isinstance(message, AIMessage):  # a looping answer ends at its first repeat, on every backend
        return [Step("answer", cut_at_repeat(str(message.content)).strip())]
    return []


def tool_failure(exc: Exception, request: ToolCallRequest) -> str:
    """The observation for a tool that raised: the kind of error only, as its message may hold internal detail."""
    name = request.tool_call["name"]
    log.warning("tool %s failed on %r", name, request.tool_call.get("args"), exc_info=exc)
    return f"{name} failed on this input ({type(exc).__name__}); try a simpler input or another tool"


def _citations(answer: str, ledger: PassageLedger) -> list[Citation]:
    cited = cited_numbers(answer)
    return [Citation.of(n, hit, n in cited) for n, hit in enumerate(ledger.hits, start=1)]


def run_agent(
    model: BaseChatModel,
    tools: Sequence[BaseTool],
    task: str,
    *,
    max_steps: int,
    ledger: PassageLedger | None = None,
    on_step: Callable[[Step], None] | None = None,
    system_prompt: str = SYSTEM,
    model_name: str = "",
    protocol: str = "",
) -> AgentResult:
    """Run `task` to a final answer or `max_steps` model calls; `on_step` sees each step as it happens."""
    ledger = ledger if ledger is not None else PassageLedger()
    limit = ModelCallLimitMiddleware(run_limit=max_steps, exit_behavior="end")
    errors = ToolErrorMiddleware(tool_failure)  # the last line of defence: a tool's crash becomes an observation
    middleware: list[AgentMiddleware[Any, Any]] = [limit, errors]
    agent = create_agent(model, list(tools), system_prompt=system_prompt, middleware=middleware)
    started = time.perf_counter()
    steps: list[Step] = []
    answer: str | None = None
    model_calls = 0
    # The step limit is the middleware's; the recursion limit only guards against a loop that never calls it.
    config: RunnableConfig = {"recursion_limit": 4 * max_steps + 10}
    for update in agent.stream({"messages": [HumanMessage(task)]}, config=config, stream_mode="updates"):
        for node, change in update.items():
            if node != "model" and node != "tools":
                continue  # middleware: the step limit's "limits exceeded" note is not the model's answer
            for message in (change or {}).get("messages", []):
                model_calls += node == "model"
                for step in _steps(message):
                    if step.kind == "answer":
                        answer = step.content
                    steps.append(step)
                    if on_step is not None:
                        on_step(step)
    timings = {
        "total_s": time.perf_counter() - started,
        "model_calls": float(model_calls),
        "tool_calls": float(sum(s.kind == "tool_call" for s in steps)),
    }
    text = answer if answer is not None else ""
    return AgentResult(task, text, _citations(text, ledger), steps, answer is not None, model_name, protocol, timings)


def run_task(
    task: str,
    settings: AgentSettings,
    *,
    generator: Callable[[], Generator],
    native_tools: bool,
    sampling: GenerationConfig,
    context_window: int,
    documents: Search | None,
    tools: Sequence[str] | None = None,
    max_steps: int | None = None,
    database: str | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> AgentResult:
    """`App.agent`: check the request, build the tools and the chat model, run the loop.

    `generator` loads the model (only once the request is known to be good); `native_tools` tells
    whether that backend calls tools itself (`agent.protocol = auto` picks tools then, else react).
    `documents` searches the workspace; None when nothing is ingested (search_documents is then not
    offered by default, and refused if asked for). `database` overrides `agent.database`.
    """
    if not task.strip():
        raise UsageError("the task is empty")
    database = settings.database if database is None else database
    names = _tool_names(tools, documents is not None, database)
    steps = max_steps if max_steps is not None else settings.max_steps
    if steps < 1:
        raise UsageError("max_steps must be at least 1")
    protocol = settings.protocol
    if protocol == "auto":
        protocol = "tools" if native_tools else "react"
    if protocol == "tools" and not native_tools:
        raise UsageError(
            "agent.protocol = tools needs generation.backend = openai (a server that calls tools: "
            "OpenAI, or vLLM with --enable-auto-tool-choice --tool-call-parser); use react for this backend"
        )
    ledger = PassageLedger()
    with ExitStack() as closing:
        built = [_tool(name, ledger, settings, database, documents, closing) for name in names]
        loaded = generator()
        model = _chat_model(loaded, protocol, sampling, context_window)
        return run_agent(
            model,
            built,
            task,
            max_steps=steps,
            ledger=ledger,
            on_step=on_step,
            model_name=loaded.model_id,
            protocol=protocol,
        )


def _tool_names(tools: Sequence[str] | None, has_documents: bool, database: str) -> list[str]:
    """The tools asked for, or by default every tool that has what it needs; unknown names are refused."""
    if tools is None:
        tools = [t for t in AGENT_TOOLS if t != "search_documents" or has_documents]
        tools = [t for t in tools if t != "sql_query" or database]
    unknown = sorted(set(tools) - set(AGENT_TOOLS))
    if unknown:
        raise UsageError(f"unknown tool {', '.join(unknown)} (available: {', '.join(AGENT_TOOLS)})")
    if not tools:
        raise UsageError("no tool to use")
    return list(dict.fromkeys(tools))


def _tool(
    name: str,
    ledger: PassageLedger,
    settings: AgentSettings,
    database: str,
    documents: Search | None,
    closing: ExitStack,
) -> BaseTool:
    if name == "search_documents":
        from ragapp.errors import EmptyWorkspace
        from ragapp.tools.search_documents import search_documents_tool

        if documents is None:
            raise EmptyWorkspace("nothing ingested yet: run `ragapp ingest PATH` first, or choose other tools")
        search, k = documents, settings.search_k
        return search_documents_tool(lambda query: search(query, k), ledger)
    if name == "sql_query":
        if not database:
            raise UsageError("sql_query needs a database: set agent.database or pass --database URL")
        from ragapp.tools.sql_query import ReadOnlyDatabase, sql_query_tool

        db = ReadOnlyDatabase(database, settings.tables, settings.max_rows, settings.sql_timeout_s)
        closing.callback(db.close)
        return sql_query_tool(db)
    from ragapp.tools.calculator import calculator_tool

    return calculator_tool()


def _chat_model(generator: Generator, protocol: str, sampling: GenerationConfig, context_window: int) -> BaseChatModel:
    """The chat model for `protocol`: the generator's own (native tool calls where its backend has them),
    or the text protocol over it when react is asked of a backend that could call tools."""
    from ragapp.react_chat import ReActChatModel

    # The answer stops of `ask` ("\nQuestion:", "\n\n[") would cut observations and answers short here.
    sampling = sampling.model_copy(update={"stop": [s for s in sampling.stop if s not in DEFAULT_STOP]})
    model = generator.chat_model(sampling, context_window)
    if protocol == "react" and not isinstance(model, ReActChatModel):
        model = ReActChatModel(generator=generator, sampling=sampling, context_window=context_window)
    return model
