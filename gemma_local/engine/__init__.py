"""The llama.cpp-backed Gemma 3 engine: requests in, event streams out."""

from gemma_local.engine.drafting import SpeculationPolicy
from gemma_local.engine.engine import Engine, ModelInfo
from gemma_local.engine.kv_slots import CheckpointPolicy
from gemma_local.engine.model import ContextParams
from gemma_local.engine.prefix_disk import DiskCachePolicy
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
    "CheckpointPolicy",
    "ContextParams",
    "DiskCachePolicy",
    "Engine",
    "Finished",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStream",
    "ImagePart",
    "ModelInfo",
    "SamplingParams",
    "SpeculationPolicy",
    "TextDelta",
    "TextPart",
    "Timings",
    "Usage",
]
