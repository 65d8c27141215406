"""The request pipeline under every surface (the HTTP APIs and the CLI).

Surfaces translate their input into a :class:`PipelineRequest`; :class:`Pipeline` checks it,
loads its images, applies the search hook, plans tools and structured output, and runs it on
the engine as a :class:`Generation` of API-neutral events. Nothing here knows about HTTP.
"""

from gemma_local.engine.tools import NamedToolChoice, ToolChoice, ToolSpec
from gemma_local.engine.types import ImageRef, ToolCall
from gemma_local.pipeline.forcing import ToolForcing
from gemma_local.pipeline.generation import (
    ChoiceDelta,
    ChoiceEnd,
    ChoiceEvent,
    ChoiceResult,
    ChoiceSearch,
    ChoiceToolCall,
    ChoiceTruncatedCall,
    Generation,
    GenerationObserver,
    GenerationOutcome,
    GenerationSummary,
    PipelineFinishReason,
    combine_usage,
)
from gemma_local.pipeline.grounding import Grounding
from gemma_local.pipeline.hosted_search import HostedSearch, SearchResult
from gemma_local.pipeline.pipeline import EngineLike, Pipeline
from gemma_local.pipeline.request import (
    DEFAULT_MAX_TOKENS,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    PipelineRequest,
    RequestLimits,
)
from gemma_local.pipeline.tooling import OutputFormat, TruncatedCall

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_STOP_LENGTH",
    "MAX_STOP_SEQUENCES",
    "ChoiceDelta",
    "ChoiceEnd",
    "ChoiceEvent",
    "ChoiceResult",
    "ChoiceSearch",
    "ChoiceToolCall",
    "ChoiceTruncatedCall",
    "EngineLike",
    "Generation",
    "GenerationObserver",
    "GenerationOutcome",
    "GenerationSummary",
    "Grounding",
    "HostedSearch",
    "ImageRef",
    "NamedToolChoice",
    "OutputFormat",
    "Pipeline",
    "PipelineFinishReason",
    "PipelineRequest",
    "RequestLimits",
    "SearchResult",
    "ToolCall",
    "ToolChoice",
    "ToolForcing",
    "ToolSpec",
    "TruncatedCall",
    "combine_usage",
]
