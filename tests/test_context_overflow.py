"""A prompt longer than the context gets the error each API's agents recognise and compact on.

OpenAI clients (Codex, the Agents SDK) look for ``code: "context_length_exceeded"``; Claude
Code parses Anthropic's ``prompt is too long: N tokens > M maximum``. Checked through the real
server with the official SDKs (strict validation), streaming and not, on all three APIs.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from gemma_local.engine import ChatMessage, GenerationRequest

MODEL = "gemma-3-27b"
LONG = "sea " * 2100  # more tokens than a test slot's 2048


@pytest.fixture(scope="module")
def n_prompt(engine) -> int:
    """The tokens the long prompt renders to (no tools, so the server adds nothing)."""
    return len(engine.prompt_tokens(GenerationRequest(messages=(ChatMessage.text("user", LONG),))))


def assert_openai_overflow(error: openai.BadRequestError, engine, n_prompt: int) -> None:
    assert error.status_code == 400
    assert error.code == "context_length_exceeded"
    assert error.type == "invalid_request_error"
    assert error.param == "messages"
    assert f"{engine.info.n_ctx_per_slot} tokens" in error.message and str(n_prompt) in error.message


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions(openai_client, engine, n_prompt: int, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=1, stream=stream
        )
    assert_openai_overflow(info.value, engine, n_prompt)


@pytest.mark.parametrize("stream", [False, True])
def test_responses(openai_client, engine, n_prompt: int, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.responses.create(model=MODEL, input=LONG, max_output_tokens=16, stream=stream)
    assert_openai_overflow(info.value, engine, n_prompt)


@pytest.mark.parametrize("stream", [False, True])
def test_messages(anthropic_client, engine, n_prompt: int, stream: bool) -> None:
    """M is the longest prompt a slot accepts: its context less the one token the answer needs."""
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client.messages.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": LONG}], stream=stream
        )
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    maximum = engine.info.n_ctx_per_slot - 1
    assert body["error"]["message"] == f"prompt is too long: {n_prompt} tokens > {maximum} maximum"
    assert n_prompt > maximum


def test_a_prompt_that_just_fits_is_served(anthropic_client, engine) -> None:
    """The boundary M names: a prompt of exactly M tokens still gets its one output token."""
    maximum = engine.info.n_ctx_per_slot - 1

    def prompt(words: int) -> tuple[str, int]:
        text = "sea " * words  # one token a word
        return text, len(engine.prompt_tokens(GenerationRequest(messages=(ChatMessage.text("user", text),))))

    overhead = prompt(1)[1] - 1
    fits, n_fits = prompt(maximum - overhead)
    assert n_fits == maximum
    message = anthropic_client.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": fits}])
    assert message.usage.output_tokens == 1
    too_long = rf"prompt is too long: {maximum + 1} tokens > {maximum} maximum"
    with pytest.raises(anthropic.BadRequestError, match=too_long):
        anthropic_client.messages.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": fits + "sea"}]
        )
