"""The llama.cpp-backed Gemma 3 engine: requests in, event streams out."""

from gemma_local.engine.engine import Engine, ModelInfo
from gemma_local.engine.model import ContextParams
from gemma_local.engine.stream import GenerationStream
from gemma_local.engine.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    GenerationResult,
    ImagePart,
    SamplingParams,
    TextDelta,
    TextPart,
    Timings,
    Usage,
)

__all__ = [
    "ChatMessage",
    "ContextParams",
    "Engine",
    "Finished",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStream",
    "ImagePart",
    "ModelInfo",
    "SamplingParams",
    "TextDelta",
    "TextPart",
    "Timings",
    "Usage",
]
