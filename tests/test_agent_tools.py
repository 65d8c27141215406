"""The tools coding agents send: namespaces, custom tools, hosted web search, client metadata.

Through the real server with the strict official SDKs. Codex sends ``namespace`` groups and a
hosted ``web_search``; Claude Code a billing-header block and ``defer_loading`` tools; the
hosted search tools of both APIs run on the search hook (a real local index here).
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from conftest import local_search_server

from gemma_local.pipeline.hosted_search import HostedSearch, SearchResult, offline_only, run_hosted_search
from gemma_local.search import ProviderChain, SearchOutcome, Source
from gemma_local.server.anthropic_messages import _citations
from gemma_local.server.openai_responses_output import _annotations

MODEL = "gemma-3-27b"
ARGS = {
    "type": "object",
    "properties": {"task": {"type": "string", "maxLength": 30}},
    "required": ["task"],
    "additionalProperties": False,
}
CODEX_LIKE_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Run a command.", "strict": False, "parameters": ARGS},
    {
        "type": "namespace",
        "name": "agents_v1",
        "description": "Tools in the agents_v1 namespace.",
        "tools": [
            {"type": "function", "name": "spawn_agent", "description": "Start a helper.", "parameters": ARGS},
            {"type": "function", "name": "wait_agent", "description": "Wait for one.", "parameters": ARGS},
        ],
    },
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch (free-form text)."},
    {"type": "web_search", "external_web_access": False},
]


def test_codex_shaped_tools_and_a_namespaced_call_round_trip(openai_client) -> None:
    response = openai_client.responses.create(
        model=MODEL,
        input="Start a helper for the tests.",
        tools=CODEX_LIKE_TOOLS,
        temperature=0,
        tool_choice={"type": "function", "name": "spawn_agent"},
        max_output_tokens=150,
        store=False,
    )
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "spawn_agent" and call.namespace == "agents_v1"
    assert json.loads(call.arguments).keys() == {"task"}
    assert [t.type for t in response.tools] == ["function", "namespace", "custom", "web_search"]
    # Codex sends the call back (namespace included) with its output: the conversation goes on.
    follow = openai_client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Start a helper for the tests."},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "started"},
        ],
        tools=CODEX_LIKE_TOOLS,
        temperature=0,
        max_output_tokens=8,
        store=False,
    )
    assert follow.status in ("completed", "incomplete")


def test_a_custom_tool_call_carries_raw_input(openai_client) -> None:
    kwargs = {
        "model": MODEL,
        "input": "Apply the fix.",
        "tools": CODEX_LIKE_TOOLS,
        "temperature": 0,
        "tool_choice": {"type": "custom", "name": "apply_patch"},
        "max_output_tokens": 150,
        "store": False,
    }
    response = openai_client.responses.create(**kwargs)
    [call] = [item for item in response.output if item.type == "custom_tool_call"]
    assert call.name == "apply_patch" and isinstance(call.input, str) and call.call_id.startswith("call_")
    events = list(openai_client.responses.create(**kwargs, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    done = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "custom_tool_call"]
    # (Streamed, the prompt comes from the prefix cache: the greedy text may differ by a token.)
    assert done and done[0].name == "apply_patch" and done[0].input == deltas
    back = openai_client.responses.create(
        model=MODEL,
        tools=CODEX_LIKE_TOOLS,
        temperature=0,
        max_output_tokens=8,
        store=False,
        input=[
            {"role": "user", "content": "Apply the fix."},
            call.model_dump(exclude_none=True),
            {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "applied"},
        ],
    )
    assert back.status in ("completed", "incomplete")


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        (
            "/v1/responses",
            {"model": MODEL, "input": "hi", "tools": [{"type": "image_generation"}]},
            "'image_generation'",
        ),
        (
            "/v1/messages",
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "bash_20250124", "name": "bash"}],
            },
            "'bash_20250124'",
        ),
    ],
)
def test_a_hosted_tool_we_cannot_run_is_a_400_naming_it(http, path, body, named) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400
    message = json.dumps(response.json())
    assert "tools[0]" in message and named in message


def test_claude_code_metadata_and_deferred_tools_stay_out_of_the_prompt(http) -> None:
    def count(system, tools=None) -> int:
        body = {"model": MODEL, "system": system, "messages": [{"role": "user", "content": "hi"}]}
        if tools:
            body["tools"] = tools
        response = http.post("/v1/messages/count_tokens", json=body)
        assert response.status_code == 200, response.text
        return response.json()["input_tokens"]

    rules = [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}]
    one = count(
        [{"type": "text", "text": "x-anthropic-billing-header: cc_version=9.9.9.a1f; cc_entrypoint=cli;"}, *rules]
    )
    two = count(
        [{"type": "text", "text": "x-anthropic-billing-header: cc_version=9.9.9.0c2; cc_entrypoint=cli;"}, *rules]
    )
    assert one == two == count(rules) == count("You are a coding agent.")
    tool = {"name": "Read", "description": "Read a file.", "input_schema": ARGS}
    deferred = {"name": "Later", "description": "Never call this tool.", "input_schema": ARGS, "defer_loading": True}
    assert count(rules, [tool, deferred]) == count(rules, [tool]) > count(rules)


# --- hosted web search on the search hook -------------------------------------------------------------

DOCS = {
    "harbor.md": "# Zephyrine harbor\n\nThe zephyrine harbor was painted cobalt blue in 1911.\n",
    "bread.md": "# Bread\n\nSourdough needs a starter and patience.\n",
}


@pytest.fixture(scope="module")
def search_server(engine, tmp_path_factory):
    server = local_search_server(engine, tmp_path_factory, DOCS)
    yield server
    server.stop()


def _expected_sources(server, query: str) -> list[str]:
    chain = server.app.state.runtime.pipeline.search_chain()
    search = HostedSearch()
    return [s.url for s in run_hosted_search("call_x", query, search, chain, lambda t: len(t.split())).sources]


def test_responses_hosted_web_search_runs_on_the_search_hook(search_server) -> None:
    client = openai.OpenAI(
        base_url=f"{search_server.base_url}/v1", api_key="x", max_retries=0, _strict_response_validation=True
    )
    kwargs = {
        "model": MODEL,
        "input": "What colour is the zephyrine harbor?",
        "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "web_search_preview"},
        "max_output_tokens": 150,
        "temperature": 0,
        "store": False,
    }
    response = client.responses.create(**kwargs)
    [search] = [item for item in response.output if item.type == "web_search_call"]
    assert response.output[0] is search and search.status == "completed" and search.action.type == "search"
    assert [s.url for s in search.action.sources or []] == _expected_sources(search_server, search.action.query)
    assert response.output[-1].type == "message"
    with client.responses.stream(**kwargs) as stream:
        final = stream.get_final_response()
    assert [i.type for i in final.output][:1] == ["web_search_call"]


def test_messages_hosted_web_search_runs_on_the_search_hook(search_server) -> None:
    client = anthropic.Anthropic(
        base_url=search_server.base_url, api_key="x", max_retries=0, _strict_response_validation=True
    )
    kwargs = {
        "model": MODEL,
        "max_tokens": 150,
        "messages": [{"role": "user", "content": "What colour is the harbor?"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
        "tool_choice": {"type": "tool", "name": "web_search"},
        "extra_body": {"temperature": 0},
    }
    message = client.messages.create(**kwargs)
    use, result = message.content[0], message.content[1]
    assert use.type == "server_tool_use" and use.name == "web_search" and "query" in use.input
    assert result.type == "web_search_tool_result" and result.tool_use_id == use.id
    assert [r.url for r in result.content] == _expected_sources(search_server, use.input["query"])
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content][:2] == ["server_tool_use", "web_search_tool_result"]


def test_offline_only_leaves_online_providers_out() -> None:
    class Provider:
        def __init__(self, name: str) -> None:
            self.name = name

    chain = ProviderChain([Provider("linkup"), Provider("local"), Provider("zim")])  # type: ignore[list-item]
    assert offline_only(chain).names == ["local", "zim"]


def test_citations_point_at_the_latest_search() -> None:
    source = Source(
        title="Harbor", url="file:///docs/harbor.md", snippet="Painted cobalt blue in 1911.", provider="local"
    )
    result = SearchResult("call_1", "harbor colour", SearchOutcome(query="harbor colour", sources=(source,)), (source,))
    text = "It is cobalt blue [1]."
    [annotation] = _annotations(text, None, [result])
    assert annotation["url"] == source.url and text[annotation["start_index"] : annotation["end_index"]] == "[1]"
    [citation] = _citations(text, [result])
    assert citation.url == source.url and citation.encrypted_index == "1" and "cobalt" in citation.cited_text


def test_hosted_search_with_no_index_says_so(http) -> None:
    body = {
        "model": MODEL,
        "input": "Anything new?",
        "tools": [{"type": "web_search", "external_web_access": False}],
        "tool_choice": {"type": "web_search_preview"},
        "max_output_tokens": 150,
        "temperature": 0,
        "store": False,
    }
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    [search] = [i for i in response.json()["output"] if i["type"] == "web_search_call"]
    assert search["action"]["sources"] == []
