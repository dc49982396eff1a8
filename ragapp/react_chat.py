"""A LangChain chat model that calls tools through a text protocol, for models without native tool calling.

The model is shown the tools and a few worked examples, and answers either

    Action: <tool name>
    Action Input: <input>

or `Final Answer: <answer>`. Replies are parsed into `AIMessage.tool_calls`, and tool results go back as
`Observation: ...`, so LangChain's agent loop runs unchanged whichever protocol the model speaks.
Measured with SmolLM2-135M-Instruct: without the examples it never used the format; with them it does.

A small model also names tools that do not exist ("eval" for arithmetic). So the tool is chosen the way
constrained decoding would: of the bound tools, the one whose name makes the model's action likeliest
(`Generator.reference_nll`), keeping the input it wrote. On benchmarks/agent_tasks.py (arithmetic, SQL,
documents; all three tools offered) that raised right-tool choices from 3 to 8 of 10 and right answers from
1 to 3, for one scoring pass per tool and step (median 4.5 → 6.7 s per task).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolCall, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from ragapp.errors import ScoringUnsupported, UsageError
from ragapp.generators.base import GenerationConfig, Message

PROTOCOL = """You answer by using tools. Tools:
{tools}

To use a tool, reply with exactly two lines:
Action: <tool name>
Action Input: <input>
The user then replies with an Observation: the tool's result. When the observations answer the task, reply:
Final Answer: <answer>"""

# (task, tool, input, observation, final answer); only the examples for the tools at hand are shown.
EXAMPLES = (
    (
        "How do I install ragapp?",
        "search_documents",
        "install ragapp",
        "[1] (installation.md, Install) Run pip install ragapp, then ragapp ingest DIR.",
        "Run pip install ragapp [1].",
    ),
    ("How many orders are there?", "sql_query", "SELECT COUNT(*) FROM orders", "COUNT(*)\n42", "There are 42 orders."),
    ("What is 12 * (3 + 4)?", "calculator", "12 * (3 + 4)", "84", "84"),
)

OBSERVATION = "Observation:"
OMITTED = "(an earlier result, left out to fit the context window)"
_ACTION = re.compile(r"^\s*Action\s*:\s*(?P<name>.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_INPUT = re.compile(r"^\s*Action\s*Input\s*:\s*(?P<input>.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_FINAL = re.compile(r"Final\s*Answer\s*:\s*", re.IGNORECASE)


def _unquote(text: str) -> str:
    text = text.strip()
    for q in ("```", "`", '"', "'"):
        if len(text) >= 2 * len(q) and text.startswith(q) and text.endswith(q):
            return text[len(q) : -len(q)].strip()
    return text


def _single_parameter(schema: dict[str, Any]) -> str | None:
    params = schema.get("function", {}).get("parameters", {}).get("properties", {})
    return next(iter(params)) if len(params) == 1 else None


def parse_reply(text: str, parameters: dict[str, str | None]) -> AIMessage:
    """A reply in the text protocol as an AIMessage: a tool call, or the final answer.

    `parameters` maps each tool name to its single argument's name (None: the input must be a JSON object).
    Text in neither form is taken as the final answer: the model has stopped using tools.
    """
    final = _FINAL.search(text)
    action = _ACTION.search(text)
    if action and not (final and final.start() < action.start()):
        name = _unquote(action.group("name"))
        given = _INPUT.search(text, action.end())
        raw = _unquote(given.group("input")) if given else ""
        param = parameters.get(name)
        args: dict[str, Any]
        if param is not None and not raw.startswith("{"):
            args = {param: raw}
        else:
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = None
            # A malformed input still becomes a call: the tool's validation error goes back to the model.
            args = parsed if isinstance(parsed, dict) else {param or "input": raw}
        call = {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}
        return AIMessage(content=text[: action.start()].strip(), tool_calls=[call])
    answer = text[final.end() :] if final else text
    return AIMessage(content=answer.strip())


def _action_text(call: ToolCall, parameters: dict[str, str | None]) -> str:
    args = call.get("args") or {}
    param = parameters.get(call["name"])
    value = args[param] if param is not None and set(args) == {param} else json.dumps(args)
    return f"Action: {call['name']}\nAction Input: {value}"


class ReActChatModel(BaseChatModel):
    """Any ragapp `Generator` as a tool-calling chat model, through the text protocol above."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any  # a ragapp Generator (not validated: it is a Protocol)
    sampling: GenerationConfig = Field(default_factory=GenerationConfig)
    tool_schemas: list[dict[str, Any]] = Field(default_factory=list)
    context_window: int = 0  # tokens; 0 = the generator's
    choose_tool: bool = True  # pick the bound tool by likelihood (see the module docstring); False: as written

    @property
    def _llm_type(self) -> str:
        return "ragapp-react"

    @property
    def parameters(self) -> dict[str, str | None]:
        return {s["function"]["name"]: _single_parameter(s) for s in self.tool_schemas}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.model_copy(update={"tool_schemas": [convert_to_openai_tool(t) for t in tools]})

    def to_messages(self, messages: Sequence[BaseMessage], examples: bool = True, omit: int = 0) -> list[Message]:
        """The conversation in the text protocol, as the chat the generator completes.

        `omit` replaces that many of the oldest tool results with a note, to fit the context window.
        """
        parameters = self.parameters
        lines = []
        for schema in self.tool_schemas:
            f = schema["function"]
            lines.append(f"{f['name']}: {f.get('description', '').strip()}")
        protocol = PROTOCOL.format(tools="\n".join(lines))
        system = "\n\n".join(
            [str(m.content) for m in messages if isinstance(m, SystemMessage) and m.content] + [protocol]
        )
        out: list[Message] = [{"role": "system", "content": system}]
        if examples:
            for task, tool, given, seen, answer in EXAMPLES:
                if tool in parameters:
                    out += [
                        {"role": "user", "content": task},
                        {"role": "assistant", "content": f"Action: {tool}\nAction Input: {given}"},
                        {"role": "user", "content": f"{OBSERVATION} {seen}"},
                        {"role": "assistant", "content": f"Final Answer: {answer}"},
                    ]
        for m in messages:
            if isinstance(m, SystemMessage):
                continue
            if isinstance(m, ToolMessage):
                shown = str(m.content) if omit <= 0 else OMITTED
                omit -= 1
                role, content = "user", f"{OBSERVATION} {shown}"
            elif isinstance(m, AIMessage):
                actions = [_action_text(c, parameters) for c in m.tool_calls]
                role, content = "assistant", "\n".join([str(m.content).strip(), *actions]).strip()
                if not m.tool_calls:
                    content = f"Final Answer: {content}"
            else:
                role, content = "user", str(m.content)
            if out[-1]["role"] == role and role == "user":  # several observations in a row: one turn
                out[-1] = {"role": role, "content": out[-1]["content"] + "\n" + content}
            else:
                out.append({"role": role, "content": content})
        return out

    def fit(self, messages: Sequence[BaseMessage], max_new_tokens: int) -> list[Message]:
        """The chat that fits the window with room for the reply: without the oldest tool results first,
        then without the examples; a task that does not fit even so is refused."""
        window = min(self.context_window or self.generator.context_window, self.generator.context_window)
        budget = window - max_new_tokens
        observations = sum(isinstance(m, ToolMessage) for m in messages)
        for examples in (True, False):
            for omit in range(observations + 1):
                chat = self.to_messages(messages, examples, omit)
                if self.generator.count_tokens(chat) <= budget:
                    return chat
        raise UsageError(
            f"the task does not fit the {window}-token context window with {max_new_tokens} tokens for the reply; "
            "shorten it or lower generation.max_new_tokens"
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stops = [*self.sampling.stop, "\n" + OBSERVATION, *(stop or [])]
        sampling = self.sampling.model_copy(update={"stop": stops})
        chat = self.fit(messages, sampling.max_new_tokens)
        text = self.generator.generate(chat, sampling)
        message = parse_reply(text, self.parameters)
        message.response_metadata = {"model_name": self.generator.model_id, "raw": text}
        if self.choose_tool and message.tool_calls and len(self.parameters) > 1:
            self._choose_tool(chat, message)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _choose_tool(self, chat: list[Message], message: AIMessage) -> None:
        """Name the bound tool that makes the model's action likeliest; its input stays as written."""
        call = message.tool_calls[0]
        parameters = self.parameters
        written = parameters.get(call["name"])
        args = call["args"]
        value = args[written] if written in args and len(args) == 1 else next(iter(args.values()), "")
        scores: dict[str, float] = {}
        for name in parameters:
            try:
                nll, _ = self.generator.reference_nll(chat, f"Action: {name}\nAction Input: {value}")
            except ScoringUnsupported:
                return  # a server without prompt log-probabilities: the model's own choice stands
            scores[name] = nll
        best = min(scores, key=scores.__getitem__)
        message.response_metadata["tool_nll"] = {k: round(v, 3) for k, v in scores.items()}
        if best != call["name"]:
            message.response_metadata["tool_written"] = call["name"]
            param = parameters[best]
            call["name"] = best
            if param is not None and isinstance(value, str):
                call["args"] = {param: value}
