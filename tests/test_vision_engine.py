"""Images through the real engine: the 270M model with a tiny random-weight Gemma 3 projector.

The projector's outputs are meaningless (see tests/tiny_mmproj.py); these tests check the
plumbing: image tokens in usage, the encoded-image and prefix caches, errors, and that image
requests run beside text-only streams without disturbing them.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from gemma_local.engine import (
    ChatMessage,
    ContextParams,
    Engine,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)
from gemma_local.errors import ModelCapabilityError, ModelLoadError

GREEDY = SamplingParams(temperature=0.0)
TOKENS_PER_IMAGE = 256 + 2  # soft tokens plus <start_of_image> and <end_of_image>


def image(color: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> ImagePart:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    data = buf.getvalue()
    return ImagePart(data=data, digest=hashlib.sha256(data).hexdigest())


def ask(*parts, max_tokens: int = 6) -> GenerationRequest:
    content = tuple(TextPart(p) if isinstance(p, str) else p for p in parts)
    return GenerationRequest(messages=(ChatMessage("user", content),), sampling=GREEDY, max_tokens=max_tokens)


def test_image_tokens_are_counted(engine) -> None:
    text_only = len(engine.prompt_tokens(ask("Describe it.")))
    result = engine.generate(ask("Describe it.", image((250, 0, 0))))
    assert result.usage.prompt_tokens == text_only + TOKENS_PER_IMAGE
    assert result.usage.completion_tokens == 6 or result.finish_reason == "stop"


def test_two_images_in_one_message(engine) -> None:
    one = len(engine.prompt_tokens(ask("Compare.", image((1, 2, 3)))))
    two = engine.generate(ask("Compare", image((1, 2, 3)), "with", image((200, 100, 0))))
    assert two.usage.prompt_tokens >= one + TOKENS_PER_IMAGE


def test_second_turn_encodes_nothing(engine) -> None:
    engine.clear_prefix_cache()
    picture = image((12, 34, 56))
    first = ask("What is in this picture?", picture)
    encodes_before = engine.vision.encode_count
    answer = engine.generate(first)
    assert engine.vision.encode_count == encodes_before + 1
    second = GenerationRequest(
        messages=(
            *first.messages,
            ChatMessage.text("assistant", answer.text),
            ChatMessage.text("user", "And the colours?"),
        ),
        sampling=GREEDY,
        max_tokens=4,
    )
    result = engine.generate(second)
    assert engine.vision.encode_count == encodes_before + 1  # the image was not encoded again
    assert result.usage.cached_tokens > TOKENS_PER_IMAGE  # nor decoded again: its KV was reused


def test_image_requests_do_not_disturb_text_streams(engine) -> None:
    text_request = GenerationRequest(
        messages=(ChatMessage.text("user", "The history of the bicycle"),), sampling=GREEDY, max_tokens=16, logprobs=0
    )
    solo = [lp.token for lp in engine.generate(text_request).logprobs]
    engine.clear_prefix_cache()
    results: dict[str, list[str]] = {}

    def run_text(name: str) -> None:
        results[name] = [lp.token for lp in engine.generate(text_request).logprobs]

    def run_image(name: str, color: tuple[int, int, int]) -> None:
        results[name] = [engine.generate(ask("Describe.", image(color), max_tokens=12)).finish_reason]

    threads = [
        threading.Thread(target=run_text, args=("text",)),
        threading.Thread(target=run_image, args=("img1", (9, 9, 9))),
        threading.Thread(target=run_image, args=("img2", (90, 9, 9))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["img1"] and results["img2"]
    assert results["text"][:8] == solo[:8]


def test_text_only_model_refuses_images(model_path: Path) -> None:
    with (
        Engine(model_path, ContextParams(n_ctx_per_seq=512, n_seq=1, n_threads=1)) as text_only,
        pytest.raises(ModelCapabilityError, match="no vision"),
    ):
        text_only.submit(ask("What is this?", image((0, 0, 0))))


def test_micro_batch_too_small_for_an_image_fails_the_request_not_the_process(model_path: Path, tiny_mmproj) -> None:
    params = ContextParams(n_ctx_per_seq=1024, n_seq=1, n_batch=128, n_ubatch=128, n_threads=1)
    with Engine(model_path, params, mmproj_path=tiny_mmproj) as small:
        stream = small.submit(ask("What is this?", image((5, 5, 5))))
        final = list(stream)[-1]
        assert final.finish_reason == "error" and "n_ubatch" in str(final.error)
        assert small.generate(ask("still alive?", max_tokens=2)).usage.completion_tokens == 2


def test_mismatched_projector_is_a_clear_load_error(model_path: Path, tmp_path: Path) -> None:
    from tiny_mmproj import write_tiny_gemma3_mmproj

    wrong = write_tiny_gemma3_mmproj(tmp_path / "wrong.gguf", text_hidden=1152)  # a 1B-sized projector
    with pytest.raises(ModelLoadError):
        Engine(model_path, ContextParams(n_ctx_per_seq=512, n_seq=1, n_threads=1), mmproj_path=wrong)
