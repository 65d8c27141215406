"""Forced calls end, and call markup never leaks (issue: agent SDKs looping on forced calls).

Under a forcing grammar a small model repeats its call until the token limit; the answer must
stop at the first repeat (or after the one call when parallel calls are off), and a call cut
by the token limit is reported the way each API reports a truncated call — never as text.
"""

from __future__ import annotations

import json

from gemma_local.engine.tools import NamedToolChoice, ToolSpec, plan_tools
from gemma_local.engine.types import ToolCall
from gemma_local.pipeline.tooling import CallSplitter, TextPiece, TruncatedCall

ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = (ToolSpec("add", "Add two integers.", ADD), ToolSpec("mul", "Multiply.", ADD))
CALL = '```tool_call\n{"name": "add", "parameters": {"a": 2, "b": 3}}\n```'
OTHER = '```tool_call\n{"name": "mul", "parameters": {"a": 2, "b": 3}}\n```'


def _splitter(*, parallel: bool = True) -> CallSplitter:
    return CallSplitter(plan_tools(TOOLS, "required", parallel=parallel), TOOLS, parallel=parallel)


def test_a_repeated_call_ends_the_answer() -> None:
    splitter = _splitter()
    first = splitter.feed(CALL + "\n")
    assert [type(i) for i in first] == [ToolCall] and not splitter.wants_stop
    assert splitter.feed(OTHER + "\n") and not splitter.wants_stop  # a different call is fine
    assert splitter.feed(CALL) == [] and splitter.wants_stop  # the repeat is dropped
    assert splitter.feed("```tool_call\n{") == [] and splitter.finish() == []


def test_parallel_calls_off_means_one_call() -> None:
    splitter = _splitter(parallel=False)
    assert len(splitter.feed(CALL + "\n")) == 1
    assert splitter.feed(OTHER) == [] and splitter.wants_stop


def test_a_call_cut_by_the_limit_is_a_truncated_call_not_text() -> None:
    splitter = _splitter()
    items = splitter.feed('Sure.\n```tool_call\n{"name": "add", "parameters": {"a": 2, "b')
    items += splitter.finish(truncated=True)
    texts = [i.text for i in items if isinstance(i, TextPiece)]
    [cut] = [i for i in items if isinstance(i, TruncatedCall)]
    assert "".join(texts).strip() == "Sure." and "tool_call" not in "".join(texts)
    assert cut.name == "add" and cut.arguments == '{"a": 2, "b'
    assert cut.id.startswith("call_")
    # Not cut by the limit (a stop sequence, the end of the answer): the unfinished text stays text.
    other = _splitter()
    rest = other.feed('```tool_call\n{"name": "add"') + other.finish(truncated=False)
    assert all(isinstance(i, TextPiece) for i in rest)


def test_a_cut_bare_call_and_a_cut_fence() -> None:
    bare = _splitter()
    items = bare.feed('{"name": "mu') + bare.finish(truncated=True)
    assert [type(i) for i in items] == [TruncatedCall] and items[0].name == ""
    fence = _splitter()
    items = fence.feed("Let me add.\n```tool_") + fence.finish(truncated=True)
    assert isinstance(items[-1], TruncatedCall) and "```" not in "".join(
        i.text for i in items if isinstance(i, TextPiece)
    )


# --- through the real server and the official SDKs ---------------------------------------------

FUNCTION = {"type": "function", "name": "add", "description": "Add two integers.", "parameters": ADD, "strict": True}
PROMPT = "Add 2 and 3, then add 2 and 3 again."


def test_forced_calls_complete_on_every_api(openai_client, anthropic_client) -> None:
    response = openai_client.responses.create(
        model="gemma-3-27b",
        input=PROMPT,
        tools=[FUNCTION],
        tool_choice="required",
        temperature=0,
        max_output_tokens=400,
        store=False,
    )
    assert response.status == "completed"
    calls = [(i.name, i.arguments) for i in response.output if i.type == "function_call"]
    assert calls and len(calls) == len(set(calls))
    assert all(i.type == "function_call" for i in response.output)

    chat = openai_client.chat.completions.create(
        model="gemma-3-27b",
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=400,
        tools=[{"type": "function", "function": {k: FUNCTION[k] for k in ("name", "description", "parameters")}}],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert chat.choices[0].finish_reason == "tool_calls" and len(chat.choices[0].message.tool_calls) == 1

    message = anthropic_client.messages.create(
        model="gemma-3-27b",
        max_tokens=400,
        messages=[{"role": "user", "content": PROMPT}],
        tools=[{"name": "add", "description": "Add two integers.", "input_schema": ADD}],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "tool_use"
    uses = [(b.name, json.dumps(b.input, sort_keys=True)) for b in message.content if b.type == "tool_use"]
    assert uses and len(uses) == len(set(uses))


def test_a_call_cut_by_max_tokens_is_never_text(openai_client, anthropic_client) -> None:
    tools = [{"type": "function", "function": {k: FUNCTION[k] for k in ("name", "description", "parameters")}}]
    cut_at_18 = {
        "model": "gemma-3-27b",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": 18,
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "add"}},
    }
    chat = openai_client.chat.completions.create(**cut_at_18)
    choice = chat.choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    [cut] = choice.message.tool_calls
    assert cut.function.name == "add" and cut.function.arguments and not cut.function.arguments.endswith("}")

    streamed = openai_client.chat.completions.create(**cut_at_18, stream=True)
    chunks = list(streamed)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    pieces = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert "".join(p.function.arguments or "" for p in pieces) == cut.function.arguments
    assert chunks[-1].choices[0].finish_reason == "length"

    for stream in (False, True):
        kwargs = {"model": "gemma-3-27b", "input": PROMPT, "tools": [FUNCTION], "max_output_tokens": 18}
        kwargs |= {"tool_choice": {"type": "function", "name": "add"}, "temperature": 0, "store": False}
        if stream:
            # The SDK's stream helper wants response.completed; an incomplete one ends with
            # response.incomplete (as OpenAI's own), so read the raw events.
            events = list(openai_client.responses.create(**kwargs, stream=True))
            assert events[-1].type == "response.incomplete"
            assert not [e for e in events if e.type == "response.output_text.delta"]
            response = events[-1].response
        else:
            response = openai_client.responses.create(**kwargs)
        assert response.status == "incomplete"
        [item] = response.output
        assert item.type == "function_call" and item.status == "incomplete" and item.name == "add"
        assert item.arguments == cut.function.arguments

    message = anthropic_client.messages.create(
        model="gemma-3-27b",
        max_tokens=18,
        messages=[{"role": "user", "content": PROMPT}],
        tools=[{"name": "add", "description": "Add two integers.", "input_schema": ADD}],
        tool_choice={"type": "tool", "name": "add"},
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "max_tokens"
    assert not [b for b in message.content if b.type == "text" and "tool_call" in b.text]
    with anthropic_client.messages.stream(
        model="gemma-3-27b",
        max_tokens=18,
        messages=[{"role": "user", "content": PROMPT}],
        tools=[{"name": "add", "description": "Add two integers.", "input_schema": ADD}],
        tool_choice={"type": "tool", "name": "add"},
        extra_body={"temperature": 0},
    ) as events:
        final = events.get_final_message()
    assert final.stop_reason == "max_tokens" and not [b for b in final.content if b.type == "text"]


def test_named_choice_is_one_call() -> None:
    plan = plan_tools(TOOLS, NamedToolChoice("add"))
    splitter = CallSplitter(plan, TOOLS)
    assert len(splitter.feed(CALL + "\n" + CALL)) == 1 and splitter.wants_stop
