"""The OpenAI Agents SDK runs an agent with a required tool against the server, on both its models.

``tool_choice="required"`` forces the first answer to call ``add``; the SDK runs the tool and
the run completes with its result. What broke before: a forced choice that never ended (the
same call until the token limit, ``response.incomplete``) and call markup leaking into text.
The run stops on the tool's result (``stop_on_first_tool``): asked again, the embedded 270M
chooses freely between a sentence and another call, which would make a run's length chance.
"""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

agents = pytest.importorskip("agents", reason="the OpenAI Agents SDK is in the test extra")

MODEL = "gemma-3-27b"


@agents.function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def _run(base_url: str, model_class: type) -> agents.RunResult:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=300)
    agent = agents.Agent(
        name="adder",
        instructions="Use the add tool to add the numbers, then say the sum.",
        tools=[add],
        model=model_class(model=MODEL, openai_client=client),
        # One call: a small model under a forcing grammar may add a second, different one.
        model_settings=agents.ModelSettings(
            tool_choice="required", max_tokens=64, temperature=0, parallel_tool_calls=False
        ),
        tool_use_behavior="stop_on_first_tool",
    )
    try:
        return await agents.Runner.run(agent, "What is 2 + 3?", max_turns=4)
    finally:
        await client.close()


@pytest.mark.parametrize("model_class", ["OpenAIResponsesModel", "OpenAIChatCompletionsModel"])
def test_a_required_tool_run_completes_with_text(live_server, model_class: str) -> None:
    agents.set_tracing_disabled(True)
    result = asyncio.run(_run(live_server.base_url, getattr(agents, model_class)))
    calls = [i for i in result.new_items if isinstance(i, agents.ToolCallItem)]
    outputs = [i for i in result.new_items if isinstance(i, agents.ToolCallOutputItem)]
    # One call: the forced answer stops at its first repeat, and nothing of a call leaks as text.
    assert len(calls) == 1 and len(outputs) == 1 and outputs[0].output == 5
    assert len(result.raw_responses) == 1
    texts = [i for i in result.new_items if isinstance(i, agents.MessageOutputItem)]
    for item in texts:
        text = agents.ItemHelpers.text_message_output(item)
        assert "```" not in text and "tool_call" not in text, text
    assert str(result.final_output) == "5"
