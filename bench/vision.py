"""Images: encode time, and the time-to-first-token the image cache saves on a second turn.

Runs the real llama.cpp image path (mtmd) with the embedded 270M model and the tiny
random-weight Gemma 3 projector the test suite generates (tests/tiny_mmproj.py): absolute
encode times are those of that tiny tower, the ratios are what carries over.

- encode: one image through the vision tower, vs the text-only prompt prefill of the same turn;
- second turn: the same conversation re-sent with one more user message. Warm = the encoded
  image and the conversation's KV are reused; cold = both caches cleared first.

    .venv/bin/python bench/vision.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

from common import THREADS, machine, median, model_path, write_result
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_mmproj import write_tiny_gemma3_mmproj

from gemma_local.engine import (
    ChatMessage,
    ContextParams,
    Engine,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)


def picture(seed: int) -> ImagePart:
    img = Image.effect_noise((640, 480), 40 + seed).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = buf.getvalue()
    return ImagePart(data=data, digest=hashlib.sha256(data).hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    mmproj = write_tiny_gemma3_mmproj(Path(tempfile.mkdtemp()) / "tiny-mmproj.gguf")
    engine = Engine(model_path(), ContextParams(n_ctx_per_seq=4096, n_seq=2, n_threads=THREADS), mmproj_path=mmproj)
    greedy = SamplingParams(temperature=0.0)
    encode_s, warm_ttft, cold_ttft = [], [], []
    for r in range(args.rounds):
        image = picture(r)
        t0 = time.perf_counter()
        engine.vision.encode(image)
        encode_s.append(time.perf_counter() - t0)
        first = GenerationRequest(
            messages=(ChatMessage("user", (TextPart("What is in this picture?"), image)),),
            sampling=greedy,
            max_tokens=8,
        )
        answer = engine.generate(first).text
        second = GenerationRequest(
            messages=(*first.messages, ChatMessage.text("assistant", answer), ChatMessage.text("user", "And then?")),
            sampling=greedy,
            max_tokens=1,
        )
        warm = engine.generate(second)
        engine.clear_prefix_cache()
        engine.vision._cache.clear()  # benchmark only: forget the encoded image too
        cold = engine.generate(second)
        warm_ttft.append(warm.timings.time_to_first_token_s)
        cold_ttft.append(cold.timings.time_to_first_token_s)
    engine.close()
    result = {
        "bench": "vision",
        "machine": machine(),
        "projector": "tiny random-weight Gemma 3 (64 px, 2 blocks, 256 tokens per image)",
        "encode_s": round(median(encode_s), 4),
        "second_turn_ttft_cold_s": round(median(cold_ttft), 4),
        "second_turn_ttft_warm_s": round(median(warm_ttft), 4),
        "warm_over_cold": round(median(warm_ttft) / median(cold_ttft), 3),
        "encode_share_of_cold_ttft": round(median(encode_s) / median(cold_ttft), 3),
    }
    write_result("vision", result)


if __name__ == "__main__":
    main()
