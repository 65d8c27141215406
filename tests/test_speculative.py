"""Speculative decoding (prompt-lookup drafts) against the same model decoding one token at a time.

The session engine drafts (conftest.TEST_SPECULATION); ``plain_engine`` is the same model and
context without drafting. Greedy output must be token-identical through the engine and all
three APIs (streamed or not, with a grammar, a forced tool call and stop strings); sampled
output must keep the model's distribution.

Each greedy comparison starts both engines idle and with an empty prefix cache (see
:func:`same_start`), so the only difference left between them is drafting.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path

import anthropic
import openai
import pytest
from conftest import TEST_THREADS, LiveServer, server_settings, wait_engine_idle
from test_server_three_apis import CITY_SCHEMA, MODEL, ask_all

from gemma_local.engine import ChatMessage, ContextParams, Engine, GenerationRequest, SamplingParams
from gemma_local.engine.drafting import DraftPacer, NgramDrafter

CODE = "\n".join(
    f"def handler_{i}(request):\n    value = request.get('field_{i}')\n    if value is None:\n"
    f"        return None\n    return value * {i}\n"
    for i in range(6)
)
REWRITE = f"Repeat this code exactly, then stop.\n\n{CODE}"


@pytest.fixture(scope="module")
def plain_engine(model_path: Path):
    eng = Engine(model_path, ContextParams(n_ctx_per_seq=2048, n_seq=4, n_threads=TEST_THREADS), max_queue=8)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain_clients(plain_engine, tmp_path_factory):
    from gemma_local.server import create_app

    db = tmp_path_factory.mktemp("plain") / "responses.db"
    server = LiveServer(create_app(plain_engine, server_settings(responses_db=db)))
    yield (
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0),
        anthropic.Anthropic(base_url=server.base_url, api_key="x", _strict_response_validation=True, max_retries=0),
    )
    server.stop()


def same_start(*engines: Engine) -> None:
    """Leave the engines idle, with nothing cached: the prompt is then computed the same way on each.

    A prompt's logits are not bit-identical across cache situations (see kv_slots' docstring:
    llama.cpp's CPU kernels depend on micro-batch sizes), and REWRITE's first token leads the
    second by 0.04 only. After the fuzz tests the session engine reused the 4 tokens
    ``<bos><start_of_turn>user\n`` computed in a short request's prompt, and answered "    \n"
    where a cold engine answers "def".
    """
    for eng in engines:
        wait_engine_idle(eng, timeout=120)
        assert not eng.stats().active, "a generation from an earlier test is still running"
        eng.clear_prefix_cache()


def rewrite(max_tokens: int = 96, **kw) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage.text("user", REWRITE),),
        sampling=kw.pop("sampling", SamplingParams(temperature=0.0)),
        max_tokens=max_tokens,
        logprobs=0,
        **kw,
    )


def test_greedy_drafting_is_token_identical_and_drafts_are_accepted(engine, plain_engine) -> None:
    same_start(engine, plain_engine)
    fast = engine.generate(rewrite())
    slow = plain_engine.generate(rewrite())
    assert [lp.token for lp in fast.logprobs] == [lp.token for lp in slow.logprobs]
    assert fast.usage.completion_tokens == slow.usage.completion_tokens
    assert slow.usage.draft_tokens == 0
    assert fast.usage.accepted_tokens > 0.5 * fast.usage.draft_tokens > 0


def test_a_stop_string_inside_an_accepted_draft_ends_the_answer_there(engine, plain_engine) -> None:
    stop = ("return value * 7",)
    same_start(engine, plain_engine)
    fast = engine.generate(rewrite(stop=stop))
    slow = plain_engine.generate(rewrite(stop=stop))
    assert fast.text == slow.text and fast.finish_reason == slow.finish_reason == "stop"
    assert fast.stop_sequence == stop[0]
    assert fast.usage.completion_tokens == slow.usage.completion_tokens


def test_three_apis_match_the_plain_engine(
    openai_client, anthropic_client, plain_clients, engine, plain_engine
) -> None:
    same_start(engine, plain_engine)
    spec = ask_all(openai_client, anthropic_client, user_content=REWRITE, max_tokens=60)
    plain = ask_all(*plain_clients, user_content=REWRITE, max_tokens=60)
    assert spec == plain


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_grammar_and_tools_match_the_plain_engine(
    openai_client, anthropic_client, plain_clients, engine, plain_engine, stream: bool
) -> None:
    def run(oa, an) -> tuple[str, str, str]:
        chat = oa.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": REWRITE}],
            max_tokens=80,
            temperature=0,
            stop=["value * 7"],
            stream=stream,
        )
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
        else:
            text = chat.choices[0].message.content
        structured = oa.responses.create(
            model=MODEL,
            input=f"{REWRITE}\nGive the first function's name as JSON.",
            text={"format": {"type": "json_schema", "name": "f", "schema": CITY_SCHEMA, "strict": True}},
            max_output_tokens=40,
            temperature=0,
            store=False,
            stream=stream,
        )
        if stream:
            structured_text = "".join(e.delta for e in structured if e.type == "response.output_text.delta")
        else:
            structured_text = structured.output_text
        message = an.messages.create(
            model=MODEL,
            max_tokens=48,
            messages=[{"role": "user", "content": f"{REWRITE}\nWhat's the weather in handler_2's city?"}],
            tools=[{"name": "get_weather", "input_schema": CITY_SCHEMA}],
            tool_choice={"type": "tool", "name": "get_weather"},
            stop_sequences=["return None"],
            extra_body={"temperature": 0},
            stream=stream,
        )
        if stream:
            call = "".join(
                e.delta.partial_json
                for e in message
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
            )
        else:
            call = json.dumps(next(b.input for b in message.content if b.type == "tool_use"))
        return text, structured_text, json.dumps(json.loads(call), sort_keys=True)

    same_start(engine, plain_engine)
    spec = run(openai_client, anthropic_client)
    assert spec == run(*plain_clients)
    assert "value * 7" not in spec[0] and spec[0]


def test_sampling_keeps_the_models_distribution(engine, plain_engine) -> None:
    """Many seeded draws at temperature 1: token frequencies at each position agree (chi-square)."""
    wait_engine_idle(engine)
    draws = 60
    positions = 6

    def histogram(eng: Engine) -> tuple[list[collections.Counter], int]:
        counts = [collections.Counter() for _ in range(positions)]
        accepted = 0
        for seed in range(draws):
            result = eng.generate(rewrite(positions, sampling=SamplingParams(temperature=1.0, seed=1000 + seed)))
            accepted += result.usage.accepted_tokens
            for i, lp in enumerate(result.logprobs):
                counts[i][lp.token] += 1
        return counts, accepted

    fast, accepted = histogram(engine)
    slow, _ = histogram(plain_engine)
    assert accepted > 0  # drafts were verified and kept under sampling, so the test means something
    assert_same_distribution(fast, slow)


def assert_same_distribution(fast: list[collections.Counter], slow: list[collections.Counter]) -> None:
    """Token frequencies at each position agree (two-sample chi-square at 99.9%)."""
    for a, b in zip(fast, slow, strict=True):
        # Two-sample chi-square over the tokens seen, rare ones pooled (expected count < 5).
        tokens = set(a) | set(b)
        common = [t for t in tokens if a[t] + b[t] >= 10]
        rows = [(a[t], b[t]) for t in common]
        rest = (sum(a.values()) - sum(x for x, _ in rows), sum(b.values()) - sum(y for _, y in rows))
        if sum(rest):
            rows.append(rest)
        stat = sum((x - y) ** 2 / (x + y) for x, y in rows if x + y)
        dof = max(1, len(rows) - 1)
        # 99.9% quantile of chi-square, Wilson-Hilferty approximation.
        z = 3.09
        limit = dof * (1 - 2 / (9 * dof) + z * (2 / (9 * dof)) ** 0.5) ** 3
        assert stat <= limit, (stat, limit, a, b)


def test_ngram_drafter_proposes_what_followed_the_latest_match() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8])
    assert drafter.draft(3) == []  # "3 7 8" … "7 8" never seen before
    for token in (1, 2, 3):
        drafter.push(token)
    assert drafter.draft(2) == [7, 8]  # the latest "1 2 3" was followed by 7 8
    assert NgramDrafter([5, 6, -3, 5, 6]).draft(4) == []  # never drafts an image placeholder


def test_pacer_grows_on_acceptance_and_pauses_on_misses() -> None:
    pacer = DraftPacer(max_len=8, length=2)
    pacer.record(2, 2)
    assert pacer.budget() == 4
    pacer.record(4, 1)
    assert pacer.budget() == 2
    for _ in range(4):
        pacer.record(2, 0)
    assert pacer.budget() == 0  # paused


def test_metrics_and_request_log_show_drafts(openai_client, http, caplog) -> None:
    def counter(text: str, name: str) -> float:
        # Labelled by endpoint and model: every model's count of the Chat endpoint.
        prefix = f'{name}{{endpoint="/v1/chat/completions",'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = http.get("/metrics").text
    with caplog.at_level(logging.INFO, logger="gemma_local.server"):
        completion = openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": REWRITE}], max_tokens=40, temperature=0
        )
        deadline = time.monotonic() + 5
        while completion.id not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    after = http.get("/metrics").text
    drafted = counter(after, "gemma_local_draft_tokens_total") - counter(before, "gemma_local_draft_tokens_total")
    accepted = counter(after, "gemma_local_draft_accepted_tokens_total") - counter(
        before, "gemma_local_draft_accepted_tokens_total"
    )
    assert drafted >= accepted > 0
    line = next(rec.getMessage() for rec in caplog.records if completion.id in rec.getMessage())
    assert f" draft={int(accepted)}/{int(drafted)}(" in line
