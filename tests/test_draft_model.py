"""Draft-model speculation: the embedded 270M drafting for itself, against the same model without.

A model drafting for itself proposes what the target would pick (greedy), so nearly every
draft is kept; the output must be token-identical to plain decoding, through the engine and
an API route, and stay so when a slot's prefix is reused and the new prompt diverges (the
draft's KV must follow the slot's, or its drafts would miss). Sampled output keeps the
model's distribution. The vocabulary check, the planner's count and the settings are here too.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import openai
import pytest
from conftest import TEST_THREADS, LiveServer, server_settings, wait_engine_idle
from test_cli import run_cli
from test_speculative import REWRITE, assert_same_distribution, rewrite

from gemma_local.engine import (
    ChatMessage,
    CheckpointPolicy,
    ContextParams,
    Engine,
    GenerationRequest,
    SamplingParams,
    SpeculationPolicy,
)
from gemma_local.engine.draft_model import DraftModel
from gemma_local.engine.vocab_match import VocabDescription, vocab_mismatch
from gemma_local.errors import DraftModelError
from gemma_local.memory import ModelShape, estimate

PARAMS = ContextParams(n_ctx_per_seq=2048, n_seq=2, n_threads=TEST_THREADS)


@pytest.fixture(scope="module")
def draft_engine(model_path: Path):
    policy = SpeculationPolicy(mode="draft", draft_max=8, draft_model=str(model_path))
    # Checkpoints every 260 tokens: the first one past the 512-token window is at 520.
    eng = Engine(
        model_path,
        PARAMS,
        max_queue=8,
        model_id="gemma-3-270m-embedded",
        speculation=policy,
        checkpoints=CheckpointPolicy(max_checkpoints=8, checkpoint_every=260),
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain(model_path: Path):
    eng = Engine(model_path, PARAMS, max_queue=8, model_id="gemma-3-270m-embedded")
    yield eng
    eng.close()


def tokens(result) -> list[str]:
    return [lp.token for lp in result.logprobs]


def test_greedy_output_is_token_identical_and_self_drafts_are_kept(draft_engine, plain) -> None:
    fast = draft_engine.generate(rewrite(48))
    slow = plain.generate(rewrite(48))
    assert tokens(fast) == tokens(slow)
    assert fast.usage.draft_tokens > 0
    assert fast.usage.accepted_tokens > 0.8 * fast.usage.draft_tokens
    assert draft_engine.draft.decode_calls > 0


def test_prefix_reuse_then_a_diverging_prompt_keeps_the_draft_in_step(draft_engine, plain) -> None:
    """A second prompt that shares the first one's start and diverges within the sliding window:
    the draft sequence is cut back with the slot, so its drafts are still the target's tokens."""
    wait_engine_idle(draft_engine)
    draft_engine.generate(rewrite(24))
    edited = GenerationRequest(
        messages=(ChatMessage.text("user", REWRITE.replace("value * 5", "value * 50")),),
        sampling=SamplingParams(temperature=0.0),
        max_tokens=40,
        logprobs=0,
    )
    warm = draft_engine.generate(edited)
    plain.clear_prefix_cache()
    cold = plain.generate(edited)
    assert warm.usage.cached_tokens > 200  # the first prompt's KV was reused
    assert tokens(warm) == tokens(cold)
    # Drafts from a draft KV out of step with the slot would miss: the 270M drafting for itself
    # keeps nearly all of them only when the draft saw exactly the slot's tokens.
    assert warm.usage.accepted_tokens > 0.8 * warm.usage.draft_tokens > 0


def test_an_edit_before_the_window_restores_the_drafts_checkpoint(draft_engine) -> None:
    """A long prompt edited ~530 tokens before its end (beyond the 512-token sliding window, after
    the checkpoint at 520):
    the draft sequence, like the slot, is restored from a checkpoint and recomputes the rest."""
    wait_engine_idle(draft_engine)

    def ask(handlers: list[str]) -> GenerationRequest:
        code = "\n".join(handlers)
        return GenerationRequest(
            messages=(ChatMessage.text("user", f"Repeat this code exactly, then stop.\n\n{code}"),),
            sampling=SamplingParams(temperature=0.0),
            max_tokens=16,
            logprobs=0,
        )

    handlers = [f"def handler_{i}(request):\n    return request.get('field_{i}') * {i}\n" for i in range(46)]
    first = draft_engine.generate(ask(handlers))
    assert first.usage.prompt_tokens > 1100
    handlers[23] = handlers[23].replace("* 23", "* 230")
    restored = draft_engine.draft.cache.checkpoints_restored
    warm = draft_engine.generate(ask(handlers))
    assert draft_engine.draft.cache.checkpoints_restored > restored
    assert 0 < warm.usage.cached_tokens < warm.usage.prompt_tokens - 512
    # (Output against a cold prompt after a restore: tests/test_prefix_checkpoints.py, for the slot.)
    assert warm.usage.accepted_tokens > 0.8 * warm.usage.draft_tokens > 0


def test_sampled_drafting_keeps_the_models_distribution(draft_engine, plain) -> None:
    """Seeded draws at temperature 1 (``--speculative draft`` drafts for them too): per-position
    token frequencies agree with plain decoding's (chi-square)."""
    wait_engine_idle(draft_engine)
    draws, positions = 30, 4

    def histogram(eng: Engine) -> tuple[list[collections.Counter], int]:
        counts = [collections.Counter() for _ in range(positions)]
        drafted = 0
        for seed in range(draws):
            result = eng.generate(rewrite(positions, sampling=SamplingParams(temperature=1.0, seed=2000 + seed)))
            assert result.finish_reason in ("length", "stop")
            assert len(result.logprobs) == result.usage.completion_tokens <= positions
            drafted += result.usage.draft_tokens
            for i, lp in enumerate(result.logprobs):
                counts[i][lp.token] += 1
        return counts, drafted

    fast, drafted = histogram(draft_engine)
    slow, _ = histogram(plain)
    assert drafted > 0
    assert_same_distribution(fast, slow)


@pytest.fixture(scope="module")
def servers(draft_engine, plain, tmp_path_factory):
    from gemma_local.server import create_app

    made = []
    for name, eng in (("draft", draft_engine), ("plain", plain)):
        db = tmp_path_factory.mktemp(name) / "responses.db"
        made.append(LiveServer(create_app(eng, server_settings(responses_db=db))))
    yield made
    for server in made:
        server.stop()


def test_streamed_chat_matches_plain_and_metrics_count_the_drafts(servers) -> None:
    import httpx

    def stream(server: LiveServer) -> str:
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
        )
        chunks = client.chat.completions.create(
            model="gemma-3-270m-embedded",
            messages=[{"role": "user", "content": REWRITE}],
            max_tokens=40,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    text = stream(servers[0])
    assert text and text == stream(servers[1])
    metrics = httpx.get(f"{servers[0].base_url}/metrics").text
    drafted = [line for line in metrics.splitlines() if line.startswith("gemma_local_draft_tokens_total{")]
    accepted = [line for line in metrics.splitlines() if line.startswith("gemma_local_draft_accepted_tokens_total{")]
    assert float(drafted[0].rsplit(" ", 1)[1]) >= float(accepted[0].rsplit(" ", 1)[1]) > 0


# --- vocabulary check ----------------------------------------------------------------------


def test_the_270m_drafts_for_itself_and_a_changed_vocabulary_is_refused(draft_engine) -> None:
    real = VocabDescription.of(draft_engine.model.vocab)
    assert real.kind == "SentencePiece" and real.size == 262144
    assert vocab_mismatch(real, VocabDescription.of(draft_engine.draft.model.vocab)) is None
    texts = list(real.texts)
    texts[1000] = b"<not the same>"
    assert "token 1000 differs" in vocab_mismatch(real, dataclasses.replace(real, texts=tuple(texts)))
    assert "BOS token differs" in vocab_mismatch(real, dataclasses.replace(real, bos=real.bos + 1))
    assert "EOT token differs" in vocab_mismatch(real, dataclasses.replace(real, eot=real.eos))
    assert "tokenizer differs" in vocab_mismatch(real, dataclasses.replace(real, kind="BPE"))
    assert "sizes differ" in vocab_mismatch(real, dataclasses.replace(real, texts=real.texts[:200000]))
    # A few padding entries more or less are fine when the shared ids agree.
    assert vocab_mismatch(real, dataclasses.replace(real, texts=real.texts[:-64])) is None


def test_a_draft_model_that_is_not_a_text_model_is_a_clear_error(draft_engine, tiny_mmproj: Path) -> None:
    with pytest.raises(DraftModelError, match=r"draft model tiny-gemma3-mmproj\.gguf could not be loaded"):
        DraftModel(tiny_mmproj, draft_engine.model)


def test_draft_mode_without_a_draft_model_is_refused() -> None:
    with pytest.raises(DraftModelError, match="--draft-model"):
        SpeculationPolicy(mode="draft")


def test_auto_drafts_with_the_draft_model_for_greedy_requests_only(model_path: Path) -> None:
    auto = SpeculationPolicy(mode="auto", draft_model=str(model_path))
    assert auto.uses_draft_model and auto.drafter_for(0.0) == "model" and auto.drafter_for(0.7) is None
    assert SpeculationPolicy(mode="auto").drafter_for(0.0) == "ngram"
    assert SpeculationPolicy(mode="draft", draft_model=str(model_path)).drafter_for(0.7) == "model"
    assert not SpeculationPolicy(mode="ngram", draft_model=str(model_path)).uses_draft_model


# --- memory plan and CLI -----------------------------------------------------------------


def test_the_draft_models_memory_is_planned_as_llama_cpp_allocates_it(draft_engine, model_path: Path) -> None:
    shape = ModelShape.from_gguf(model_path)
    alone = estimate(shape, ctx=2048, parallel=2, draft_max=8)
    with_draft = estimate(shape, ctx=2048, parallel=2, draft_max=8, draft=shape)
    actual = draft_engine.draft.model.allocations
    assert with_draft.draft_weights == shape.weights_bytes
    assert with_draft.draft_kv == pytest.approx(actual.kv, rel=0.05)
    assert with_draft.draft_compute == pytest.approx(actual.compute + actual.output, rel=0.15)
    assert with_draft.total == alone.total + with_draft.draft


def test_cli_draft_flags(model_path: Path) -> None:
    missing = run_cli("generate", "hi", "--speculative", "draft", "--ctx", "1024")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("Error: --speculative draft needs a draft model: pass --draft-model")
    unknown = run_cli("info", "--speculative", "draft", "--draft-model", "/nonexistent/draft.gguf")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "Error: Draft model (--draft-model): Model file not found: /nonexistent/draft.gguf"
    info = run_cli("info", "--json", "--ctx", "2048", env_extra={"GEMMA_LOCAL_DRAFT_MODEL": str(model_path)})
    assert info.returncode == 0, info.stderr
    result = json.loads(info.stdout)
    assert result["speculative"]["draft_model"] == str(model_path)  # auto + a draft model
    assert result["plan"]["estimate"]["draft"] > result["plan"]["estimate"]["draft_weights"] > 0
    run = run_cli(
        "generate", "The sky is", "--temperature", "0", "--max-tokens", "8", "--json", "--ctx", "1024",
        "--speculative", "draft", "--draft-model", str(model_path),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["usage"]["completion_tokens"] == 8
