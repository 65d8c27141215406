"""``serve --force-tool NAME``: one forced call at the start of each user turn, then free answers.

The policy decides on the conversation's shape; on the real engine a forced turn makes exactly
the one call, and the turn after the tool result is not forced.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gemma_local.engine import ChatMessage, GenerationRequest, SamplingParams
from gemma_local.engine.tools import NamedToolChoice, ToolSpec
from gemma_local.engine.types import ToolCall
from gemma_local.pipeline import ChoiceToolCall, OutputFormat, Pipeline, PipelineRequest, RequestLimits, ToolForcing

READ = ToolSpec(
    "read_note",
    "Read the note with this title.",
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 12}}, "required": ["title"]},
)
OTHER = ToolSpec("other", "Another tool.")
CALL = ToolCall(id="call_1", name="read_note", arguments={"title": "x"})


def _request(*messages: ChatMessage, tools=(READ, OTHER), tool_choice="auto") -> PipelineRequest:
    generation = GenerationRequest(messages=messages, sampling=SamplingParams(temperature=0), max_tokens=64)
    return PipelineRequest(
        endpoint="test",
        request_id="req",
        model="gemma-3-27b",
        generation=generation,
        tools=tools,
        tool_choice=tool_choice,
    )


USER = ChatMessage.text("user", "What does my note say?")
SYSTEM = ChatMessage.text("system", "Be brief.")
ASSISTANT_CALL = ChatMessage(role="assistant", content=(), tool_calls=(CALL,))
RESULT = ChatMessage.text("tool", "Buy milk.")


def test_a_user_turn_that_offers_the_tool_is_forced_to_one_call() -> None:
    forced = ToolForcing("read_note").apply(_request(USER))
    assert forced.tool_choice == NamedToolChoice("read_note") and forced.parallel_tool_calls is False


@pytest.mark.parametrize(
    "messages",
    [
        (USER, SYSTEM),  # instructions after the user's message (Claude Code's first turn)
        (USER, ASSISTANT_CALL, RESULT, ChatMessage.text("assistant", "Milk."), USER),  # a later user turn
    ],
)
def test_the_user_spoke_last(messages) -> None:
    assert ToolForcing("read_note").applies_to(_request(*messages))


@pytest.mark.parametrize(
    ("forcing", "request_"),
    [
        (ToolForcing(None), _request(USER)),  # the policy is off
        (ToolForcing("read_note"), _request(USER, ASSISTANT_CALL, RESULT)),  # the result is back
        # Text beside a tool result (Anthropic sends both in one user message) is no new turn.
        (ToolForcing("read_note"), _request(USER, ASSISTANT_CALL, RESULT, USER)),
        (ToolForcing("read_note"), _request(USER, tools=(OTHER,))),  # not offered
        (ToolForcing("read_note"), _request(USER, tool_choice="none")),  # the client chose
        (ToolForcing("read_note"), _request(USER, tool_choice="required")),
        (ToolForcing("read_note"), _request(SYSTEM)),  # nobody asked anything
        (ToolForcing("read_note"), replace(_request(USER), output_format=OutputFormat("json_object"))),
    ],
)
def test_left_alone(forcing: ToolForcing, request_: PipelineRequest) -> None:
    assert forcing.apply(request_) is request_


async def _calls(pipeline: Pipeline, request: PipelineRequest) -> list[ToolCall]:
    generation = await pipeline.start(request)
    return [e.call for e in [event async for event in generation.events()] if isinstance(e, ChoiceToolCall)]


def test_the_engine_makes_the_forced_call_and_then_answers_freely(engine) -> None:
    pipeline = Pipeline(engine, RequestLimits(max_output_tokens=64), forcing=ToolForcing("read_note"))
    calls = asyncio.run(_calls(pipeline, _request(USER)))
    assert [c.name for c in calls] == ["read_note"]
    assert Pipeline(engine).forcing.tool is None  # off unless configured
