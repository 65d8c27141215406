"""Gemma 3 function calling: the call parser on a hand-written corpus, the stream filter split at
every point, the forcing grammars against llama.cpp, history rendering, and forced calls made
by the real model."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import wait_engine_idle
from grammar_support import GrammarProbe

from gemma_local.engine import ChatMessage, GenerationRequest, SamplingParams, TextDelta, TextPart, gbnf
from gemma_local.engine.chat_format import render
from gemma_local.engine.json_schema import validate_instance
from gemma_local.engine.tools import (
    NamedToolChoice,
    ToolCall,
    ToolCallStreamFilter,
    ToolSpec,
    new_call_id,
    parse_tool_calls,
    plan_tools,
    render_tool_call,
    render_tool_calls,
    render_tool_instructions,
    tool_call_grammar,
)
from gemma_local.errors import InvalidRequestError, UnsupportedSchemaError

WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
)
TIME = ToolSpec(
    "get_time",
    "Current time in a time zone.",
    {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}}, "required": ["timezone"]},
)
PING = ToolSpec("ping")
TOOLS = [WEATHER, TIME, PING]

PARIS = '```tool_call\n{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}\n```'
TOKYO = '```tool_call\n{"name": "get_time", "parameters": {"timezone": "Asia/Tokyo"}}\n```'
PARIS_CALL = ("get_weather", {"city": "Paris", "unit": "celsius"})
TOKYO_CALL = ("get_time", {"timezone": "Asia/Tokyo"})

# (model output, expected content, expected calls)
CORPUS: list[tuple[str, str, list[tuple[str, dict]]]] = [
    # text only
    ("The weather in Paris is sunny.", "The weather in Paris is sunny.", []),
    ("Use `ls` or ``ls -l``; never ```rm```.", "Use `ls` or ``ls -l``; never ```rm```.", []),
    ("Here:\n```python\nprint('hi')\n```\nDone.", "Here:\n```python\nprint('hi')\n```\nDone.", []),
    ('{"answer": 42}', '{"answer": 42}', []),
    ("\n  Indented answer.\n", "\n  Indented answer.\n", []),
    # one call
    (PARIS, "", [PARIS_CALL]),
    (f"\n{PARIS}\n", "", [PARIS_CALL]),
    ('{"name": "get_time", "parameters": {"timezone": "Asia/Tokyo"}}', "", [TOKYO_CALL]),
    ('```json\n{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n```', "", [TOKYO_CALL]),
    ('```tool_code\n{"name": "ping"}\n```', "", [("ping", {})]),
    # two calls
    (f"{PARIS}\n{TOKYO}", "", [PARIS_CALL, TOKYO_CALL]),
    (f"{PARIS}\n\n{TOKYO}\n", "", [PARIS_CALL, TOKYO_CALL]),
    (
        '```tool_call\n[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}},'
        ' {"name": "get_time", "parameters": {"timezone": "Asia/Tokyo"}}]\n```',
        "",
        [PARIS_CALL, TOKYO_CALL],
    ),
    (
        '{"name": "get_time", "parameters": {"timezone": "Asia/Tokyo"}}\n{"name": "ping", "parameters": {}}',
        "",
        [TOKYO_CALL, ("ping", {})],
    ),
    # malformed calls stay text
    (PARIS[:-5], PARIS[:-5], []),  # cut short
    (
        '```tool_call\n{"name": "get_weather", "parameters": {"city": "Paris"\n```',
        '```tool_call\n{"name": "get_weather", "parameters": {"city": "Paris"\n```',
        [],
    ),
    (
        '```tool_call\n{"name": "launch", "parameters": {}}\n```',
        '```tool_call\n{"name": "launch", "parameters": {}}\n```',
        [],
    ),
    ('```tool_call\n{"name": "ping", "extra": 1}\n```', '```tool_call\n{"name": "ping", "extra": 1}\n```', []),
    ('[get_weather(city="Paris")]', '[get_weather(city="Paris")]', []),
    (
        '{"name": "get_time", "parameters": {"timezone": "UTC"',
        '{"name": "get_time", "parameters": {"timezone": "UTC"',
        [],
    ),
    # calls inside prose
    (f"Let me check.\n{PARIS}\nI will report back.", "Let me check.\nI will report back.", [PARIS_CALL]),
    (
        f"First the weather:\n{PARIS}\nthen the time:\n{TOKYO}",
        "First the weather:\nthen the time:",
        [PARIS_CALL, TOKYO_CALL],
    ),
    (f"[see below] {PARIS}", "[see below]", [PARIS_CALL]),
]


def _stream(text: str, chunks: list[int]) -> tuple[str, list[tuple[str, dict]], list[str]]:
    f = ToolCallStreamFilter(TOOLS)
    items = []
    start = 0
    for size in chunks:
        items += f.feed(text[start : start + size])
        start += size
    items += f.feed(text[start:])
    items += f.finish()
    content = [i for i in items if isinstance(i, str)]
    calls = [(i.name, i.arguments) for i in items if isinstance(i, ToolCall)]
    return "".join(content), calls, content


@pytest.mark.parametrize(("output", "content", "calls"), CORPUS)
def test_parser_corpus(output: str, content: str, calls: list[tuple[str, dict]]) -> None:
    parsed = parse_tool_calls(output, TOOLS)
    assert parsed.text == content
    assert [(c.name, c.arguments) for c in parsed.calls] == calls
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in parsed.calls)


@pytest.mark.parametrize(("output", "content", "calls"), CORPUS)
def test_stream_filter_one_character_at_a_time(output: str, content: str, calls: list[tuple[str, dict]]) -> None:
    streamed, streamed_calls, pieces = _stream(output, [1] * len(output))
    # Content can never be taken back, so equality also proves no call text leaked out early.
    assert streamed == content
    assert streamed_calls == calls
    if calls:
        assert not any("tool_call" in p or '"parameters"' in p for p in pieces)


def test_stream_filter_at_random_split_points() -> None:
    rng = random.Random(3)
    for output, content, calls in CORPUS:
        for _ in range(15):
            chunks = [rng.randint(1, 12) for _ in range(len(output) // 3)]
            assert _stream(output, chunks)[:2] == (content, calls), (output, chunks)


def test_stream_filter_orders_text_and_calls_and_streams_plain_text_at_once() -> None:
    f = ToolCallStreamFilter(TOOLS)
    assert f.feed("Checking") == ["Checking"]
    assert f.feed(" now.\n``") == [" now."]  # the newline and backticks wait: a fence may follow
    assert f.feed("`tool_call\n{") == []
    items = f.feed(PARIS[len("```tool_call\n{") :] + "\nDone")
    assert [type(i) for i in items] == [ToolCall, str] and items[1] == "\nDone"
    assert f.finish() == []
    assert [c.name for c in f.calls] == ["get_weather"]
    # A bare JSON answer that cannot be a call is released as soon as its first key shows it.
    g = ToolCallStreamFilter(TOOLS)
    assert g.feed('{"na') == []
    assert g.feed('me": "x"') == []
    h = ToolCallStreamFilter(TOOLS)
    assert h.feed('{"answer": 4') == ['{"answer": 4']
    # Without bare calls (an expected JSON answer), JSON streams at once.
    assert ToolCallStreamFilter(TOOLS, bare_calls=False).feed('{"name": "ping"') == ['{"name": "ping"']


def test_unknown_tools_are_accepted_when_no_tool_list_is_given() -> None:
    assert [c.name for c in parse_tool_calls('```tool_call\n{"name": "anything"}\n```').calls] == ["anything"]


def test_call_ids_and_api_prefixes() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    call = ToolCall(id="call_abc123", name="ping", arguments={"x": "é"})
    assert call.id_for("toolu_") == "toolu_abc123"
    assert call.id_for("fc_") == "fc_abc123"
    assert call.arguments_json == '{"x": "é"}'
    assert hash(call) == hash(ToolCall(id="call_abc123", name="ping", arguments={"x": "é"}))


# --- prompt format and history -----------------------------------------------------------------


def test_instructions_follow_googles_guidance() -> None:
    text = render_tool_instructions(TOOLS, "auto")
    assert "reply with only the tool_call block(s) and no other text" in text
    assert render_tool_call("function_name", {"argument": "value"}) in text
    assert '{"name": "get_weather", "description": "Current weather for a city.", "parameters": {' in text
    assert '{"name": "ping", "parameters": {"type": "object", "properties": {}}}' in text
    assert "answer normally" in text
    # Forcing is the grammar's job: the prompt is the same whatever the choice, so an agent that
    # forces its first call and then lets the model answer reuses the whole cached prompt.
    assert render_tool_instructions(TOOLS, NamedToolChoice("get_time")) == text
    assert render_tool_instructions(TOOLS, "required") == text
    assert render_tool_instructions(TOOLS, "none") == ""


def test_history_with_calls_and_results_renders_in_the_call_format() -> None:
    calls = (
        ToolCall("call_1", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ToolCall("call_2", "get_time", {"timezone": "Asia/Tokyo"}),
    )
    messages = [
        ChatMessage.text("user", "Weather in Paris and time in Tokyo?"),
        ChatMessage(role="assistant", content=(), tool_calls=calls),
        ChatMessage.text("tool", '{"temperature": 21}'),
        ChatMessage.text("tool", "14:05"),
    ]
    assert render(messages).text == (
        "<bos><start_of_turn>user\nWeather in Paris and time in Tokyo?<end_of_turn>\n"
        f"<start_of_turn>model\n{PARIS}\n{TOKYO}<end_of_turn>\n"
        '<start_of_turn>user\n```tool_output\n{"temperature": 21}\n```\n\n```tool_output\n14:05\n```<end_of_turn>\n'
        "<start_of_turn>model\n"
    )
    assert render_tool_calls(calls) == f"{PARIS}\n{TOKYO}"
    # What the model sees of its own calls parses back to the same calls.
    again = parse_tool_calls(render_tool_calls(calls), TOOLS)
    assert [(c.name, c.arguments) for c in again.calls] == [PARIS_CALL, TOKYO_CALL]
    with_text = ChatMessage(role="assistant", content=(TextPart("Checking."),), tool_calls=calls[:1])
    rendered = render([messages[0], with_text, messages[2]]).text
    assert f"<start_of_turn>model\nChecking.\n\n{PARIS}<end_of_turn>" in rendered


# --- plans and grammars ---------------------------------------------------------------------------


def test_plans_per_tool_choice() -> None:
    none = plan_tools(TOOLS, "none")
    assert (none.instructions, none.grammar, none.parse_calls) == (None, None, False)
    auto = plan_tools(TOOLS, "auto")
    assert auto.instructions and auto.parse_calls
    assert auto.stop == ("```tool_output",) and none.stop == ()
    required = plan_tools(TOOLS, "required")
    assert required.grammar and required.parse_calls and required.grammar_trigger is None
    # auto: the call grammar, switched on by the call fence.
    assert (auto.grammar, auto.grammar_trigger) == (required.grammar, "```tool_call")
    single = plan_tools(TOOLS, "auto", parallel=False)
    assert single.grammar == plan_tools(TOOLS, "required", parallel=False).grammar
    named = plan_tools(TOOLS, NamedToolChoice("get_time"))
    assert named.grammar and named.instructions == auto.instructions
    with pytest.raises(InvalidRequestError) as info:
        plan_tools(TOOLS, NamedToolChoice("nope"))
    assert info.value.param == "tool_choice"
    with pytest.raises(InvalidRequestError):
        plan_tools([], "required")
    assert plan_tools([], "auto") == plan_tools([], "none")


def test_auto_with_a_schema_no_grammar_can_enforce() -> None:
    parameters = {
        "type": "object",
        "properties": {"n": {"type": "integer", "multipleOf": 2}},
        "required": ["n"],
        "additionalProperties": False,
    }
    odd = ToolSpec("odd", parameters=parameters)
    # Not strict: calls are parsed but not constrained, for every tool of the request.
    loose = plan_tools([*TOOLS, odd], "auto")
    assert (loose.grammar, loose.grammar_trigger, loose.parse_calls) == (None, None, True)
    # Strict: the promise of valid arguments cannot be kept, so the request is refused.
    with pytest.raises(UnsupportedSchemaError) as info:
        plan_tools([*TOOLS, ToolSpec("odd", parameters=parameters, strict=True)], "auto")
    assert info.value.keyword == "multipleOf" and info.value.param == "tools"
    # Forced, it is refused either way.
    with pytest.raises(UnsupportedSchemaError):
        plan_tools([*TOOLS, odd], "required")


def test_bad_tool_definitions_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        ToolSpec("has space")
    with pytest.raises(InvalidRequestError):
        ToolSpec("f", parameters={"type": "string"})
    bad = ToolSpec("f", parameters={"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}})
    with pytest.raises(UnsupportedSchemaError) as info:
        tool_call_grammar([bad], "required")
    assert info.value.param == "tools" and info.value.keyword == "multipleOf"
    strict = ToolSpec("g", parameters={"type": "object", "properties": {"a": {"type": "string"}}}, strict=True)
    with pytest.raises(UnsupportedSchemaError):
        tool_call_grammar([strict], "required")


@pytest.fixture(scope="module")
def probe(model_path: Path):
    p = GrammarProbe(model_path)
    yield p
    p.close()


def test_forcing_grammars_allow_only_valid_calls(probe: GrammarProbe) -> None:
    required = tool_call_grammar(TOOLS, "required")
    assert probe.accepts(required, PARIS)
    assert probe.accepts(required, f"{PARIS}\n{TOKYO}")
    assert probe.accepts(required, render_tool_call("ping", {}))
    assert not probe.accepts(required, "Sure!")
    assert not probe.accepts(required, render_tool_call("get_weather", {"city": "Paris", "unit": "kelvin"}))
    assert not probe.accepts(required, render_tool_call("get_weather", {"city": "Paris"}))
    assert not probe.accepts(required, render_tool_call("ping", {"x": 1}))
    assert not probe.accepts(required, render_tool_call("launch", {}))
    assert not probe.accepts(required, "\n".join([PARIS] * 9))  # at most MAX_PARALLEL_CALLS
    single = tool_call_grammar(TOOLS, "required", parallel=False)
    assert probe.accepts(single, TOKYO) and not probe.accepts(single, f"{PARIS}\n{TOKYO}")
    named = tool_call_grammar(TOOLS, NamedToolChoice("get_time"))
    assert probe.accepts(named, TOKYO)
    assert not probe.accepts(named, PARIS)
    assert not probe.accepts(named, f"{TOKYO}\n{TOKYO}")
    # auto + a response format: either calls or JSON of that schema.
    answer = {"type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"]}
    either = tool_call_grammar(TOOLS, "auto", response_schema=answer)
    assert probe.accepts(either, PARIS) and probe.accepts(either, '{"reply": "hi"}')
    assert not probe.accepts(either, "hi")
    assert tool_call_grammar(TOOLS, "auto") is None
    only_json = tool_call_grammar(TOOLS, "none", response_schema=answer)
    assert probe.accepts(only_json, '{"reply": "hi"}') and not probe.accepts(only_json, PARIS)


def test_random_walks_through_forcing_grammars_parse_as_valid_calls(probe: GrammarProbe) -> None:
    rng = random.Random(1)
    specs = {t.name: t for t in TOOLS}
    for choice in ("required", NamedToolChoice("get_weather")):
        grammar = tool_call_grammar(TOOLS, choice)
        walks = [w for w in (probe.random_walk(grammar, rng, max_steps=600) for _ in range(15)) if w is not None]
        assert len(walks) >= 5
        for text in walks:
            parsed = parse_tool_calls(text, TOOLS)
            assert parsed.text == "" and parsed.calls, text
            for call in parsed.calls:
                assert validate_instance(specs[call.name].parameters, call.arguments) == [], text


# --- the real model ------------------------------------------------------------------------------


def test_forced_calls_from_the_real_model_are_well_formed_and_schema_valid(engine) -> None:
    question = ChatMessage.text("user", "What's the weather in Paris, and the time in Tokyo?")
    streams = {}
    for choice in ("required", NamedToolChoice("get_time")):
        plan = plan_tools(TOOLS, choice)
        request = GenerationRequest(
            messages=(ChatMessage.text("system", plan.instructions or ""), question),
            sampling=SamplingParams(temperature=0.0, repeat_penalty=1.3, grammar=plan.grammar),
            max_tokens=150,
        )
        streams[str(choice)] = engine.submit(request)
    for choice, stream in streams.items():
        f = ToolCallStreamFilter(TOOLS)
        items = []
        for event in stream:
            if isinstance(event, TextDelta):
                items += f.feed(event.text)
        items += f.finish()
        assert stream.finished is not None and stream.finished.finish_reason == "stop", choice
        assert [i for i in items if isinstance(i, str)] == [], choice  # no call text leaked as content
        assert f.calls, choice
        specs = {t.name: t for t in TOOLS}
        for call in f.calls:
            assert validate_instance(specs[call.name].parameters, call.arguments) == [], call
        if "get_time" in choice:
            assert [c.name for c in f.calls] == ["get_time"]


# --- the lazy grammar of auto calls, on the real model ----------------------------------------------

POEM = (ChatMessage.text("user", "Write a short poem about the sea."),)


def _greedy(**sampling) -> GenerationRequest:
    # Eight tokens: the model's answer is its own sentence that far, with no near-tied junk
    # tokens after it that rounding could flip between runs.
    return GenerationRequest(messages=POEM, sampling=SamplingParams(temperature=0.0, **sampling), max_tokens=8)


def _cold(engine, request: GenerationRequest):
    """Generate alone and from a cold cache, so that two runs compute exactly the same logits."""
    wait_engine_idle(engine)
    engine.clear_prefix_cache()
    return engine.generate(request)


@pytest.fixture(scope="module")
def free_tokens(engine) -> list[str]:
    """The model's own greedy answer, token by token (a lazy grammar must leave it alone)."""
    result = _cold(engine, _greedy().model_copy(update={"logprobs": 0}))
    tokens = [lp.token for lp in result.logprobs]
    assert "".join(tokens) == result.text and len(tokens) >= 6
    return tokens


def test_lazy_grammar_takes_over_at_its_trigger(engine, free_tokens) -> None:
    prefix, trigger = "".join(free_tokens[:2]), "".join(free_tokens[2:4])
    assert (prefix + trigger).find(trigger) == len(prefix)
    grammar = f"root ::= {gbnf.literal(trigger)} {gbnf.literal(' banana')}"
    result = _cold(engine, _greedy(grammar=grammar, grammar_trigger=trigger))
    # Free until the trigger, then only what the grammar allows, then the end it allows.
    assert result.text == prefix + trigger + " banana"
    assert result.finish_reason == "stop"


def test_lazy_grammar_left_off_when_its_trigger_is_followed_by_what_it_rejects(engine, free_tokens) -> None:
    token = next(t for t in free_tokens[2:] if len(t.strip()) >= 2)
    trigger = token[:-1]  # the token that completes it brings one more character
    grammar = f"root ::= {gbnf.literal(trigger)} {gbnf.literal('QQQ')}"
    result = _cold(engine, _greedy(grammar=grammar, grammar_trigger=trigger))
    assert result.text == "".join(free_tokens)  # the answer the model writes without any grammar


def test_a_trigger_without_a_grammar_is_refused() -> None:
    with pytest.raises(ValueError, match="grammar_trigger needs a grammar"):
        SamplingParams(grammar_trigger="```tool_call")
