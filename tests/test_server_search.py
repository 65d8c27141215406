"""The search hook over HTTP (Chat Completions): sources in the prompt, footer, metadata.

The server gets a real provider chain over a real local index built in the test; the model
is the real 270M one (its text is arbitrary, so the checks are on structure and the footer).
"""

from __future__ import annotations

import openai
import pytest
from conftest import LiveServer, local_search_server, server_settings

from gemma_local.search import ProviderChain
from gemma_local.server import create_app

QUESTION = "What colour is the zephyrine harbor?"


@pytest.fixture(scope="module")
def search_server(engine, tmp_path_factory: pytest.TempPathFactory):
    server = local_search_server(
        engine,
        tmp_path_factory,
        {
            "harbor.md": "# Zephyrine harbor\n\nThe zephyrine harbor was painted cobalt blue in 1911.\n",
            "bread.md": "# Bread\n\nSourdough needs a starter and patience.\n",
        },
    )
    yield server
    server.stop()


@pytest.fixture
def client(search_server) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{search_server.base_url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True
    )


def ask(client: openai.OpenAI, question: str = QUESTION, **extra):
    return client.chat.completions.create(
        model="gemma-3-27b",
        messages=[{"role": "user", "content": question}],
        max_tokens=6,
        temperature=0,
        extra_body={"web_search_linkup": True, **extra},
    )


def test_sources_footer_and_metadata(client, search_server) -> None:
    completion = ask(client)
    text = completion.choices[0].message.content
    assert text.endswith(f"\n\nSources:\n[1] Zephyrine harbor — {search_server.docs / 'harbor.md'}")
    meta = completion.model_extra["search"]
    assert meta["provider"] == "local" and meta["sources_used"] == 1
    plain = client.chat.completions.create(
        model="gemma-3-27b", messages=[{"role": "user", "content": QUESTION}], max_tokens=6, temperature=0
    )
    # The sources were put into the prompt.
    assert completion.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert "Sources:" not in plain.choices[0].message.content


def test_disable_formatting_drops_the_footer_only(client) -> None:
    completion = ask(client, disable_formatting=True)
    assert "Sources:" not in completion.choices[0].message.content
    assert completion.model_extra["search"]["sources_used"] == 1


def test_streamed_answer_ends_with_the_footer(client, search_server) -> None:
    stream = client.chat.completions.create(
        model="gemma-3-27b",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=6,
        temperature=0,
        stream=True,
        extra_body={"web_search_linkup": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith(f"[1] Zephyrine harbor — {search_server.docs / 'harbor.md'}")
    assert chunks[0].model_extra["search"]["sources_used"] == 1


def test_no_results_answers_without_sources_and_says_so(client) -> None:
    completion = ask(client, question="Tell me about quasar knitting patterns")
    assert "\n\nSources: none." in completion.choices[0].message.content
    assert completion.model_extra["search"]["sources_used"] == 0


def test_no_provider_at_all_never_fails_the_request(engine) -> None:
    server = LiveServer(create_app(engine, server_settings(), search_chain=ProviderChain([])))
    try:
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True
        )
        completion = ask(client)
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert "Sources: none." in completion.choices[0].message.content
    finally:
        server.stop()


def test_responses_api_metadata_footer_and_url_citations(client, search_server, engine) -> None:
    response = client.responses.create(
        model="gemma-3-27b",
        input=QUESTION,
        max_output_tokens=6,
        temperature=0,
        extra_body={"web_search_linkup": True},
    )
    assert response.output_text.endswith(f"[1] Zephyrine harbor — {search_server.docs / 'harbor.md'}")
    assert response.metadata["search_provider"] == "local"
    assert response.metadata["search_sources_used"] == "1"


def test_url_citation_annotations_point_at_the_cited_source(engine, search_server) -> None:
    """Where the answer cites [1], the output text carries a url_citation for that source."""
    from gemma_local.engine import ChatMessage, GenerationRequest
    from gemma_local.pipeline.grounding import ground
    from gemma_local.server.openai_responses_output import _annotations

    runtime_chain = search_server.app.state.runtime.pipeline.search_chain()
    grounding = ground(
        GenerationRequest(messages=(ChatMessage.text("user", QUESTION),), max_tokens=8), engine, runtime_chain
    )
    answer = "It is cobalt blue [1]."
    annotations = _annotations(answer + grounding.footer, grounding)
    assert annotations == [
        {
            "type": "url_citation",
            "start_index": answer.index("[1]"),
            "end_index": answer.index("[1]") + 3,
            "url": (search_server.docs / "harbor.md").as_uri(),
            "title": "Zephyrine harbor",
        }
    ]


def test_messages_api_footer_and_metadata(search_server) -> None:
    import anthropic

    client = anthropic.Anthropic(
        base_url=search_server.base_url, api_key="unused", max_retries=0, _strict_response_validation=True
    )
    message = client.messages.create(
        model="gemma-3-27b",
        max_tokens=6,
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"web_search_linkup": True, "temperature": 0},
    )
    assert message.content[0].text.endswith(f"[1] Zephyrine harbor — {search_server.docs / 'harbor.md'}")
    assert message.model_extra["search"]["sources_used"] == 1
    with client.messages.stream(
        model="gemma-3-27b",
        max_tokens=6,
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"web_search_linkup": True, "disable_formatting": True, "temperature": 0},
    ) as stream:
        text = "".join(stream.text_stream)
    assert "Sources:" not in text
