"""The common request every surface translates into, and the limits every request meets.

An API translator (or the CLI) builds a :class:`PipelineRequest`: the conversation and
sampling as the engine takes them, plus what only the pipeline handles (``n`` choices, tools,
structured output, the search hook). Defaults and limits are decided here once, not per API:

- output tokens: the hosted default (4096) when a request names none, never more than the
  server's cap (8192 unless configured);
- stop sequences: at most :data:`MAX_STOP_SEQUENCES`, each at most :data:`MAX_STOP_LENGTH`
  characters. Every sequence is checked against the text after every token, so an unbounded
  list is a cheap way to slow the server down. OpenAI allows 4, which some agent frameworks
  exceed; 16 leaves them room.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_local.engine import GenerationRequest
from gemma_local.engine.tools import ToolChoice, ToolSpec
from gemma_local.errors import InvalidRequestError
from gemma_local.pipeline.hosted_search import HostedSearch
from gemma_local.pipeline.tooling import OutputFormat

#: The hosted API's default when a request gives no output limit.
DEFAULT_MAX_TOKENS = 4096
#: The hosted API's cap on output tokens per response (the server's default cap).
DEFAULT_OUTPUT_CAP = 8192
#: Stop sequences one request may give.
MAX_STOP_SEQUENCES = 16
#: Characters in one stop sequence.
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class PipelineRequest:
    """One request, translated: the conversation and options, and how many choices.

    Args:
        endpoint: where it came from (a route path such as ``/v1/chat/completions``, or
            ``cli``), for metrics labels.
        request_id: the API's own id for this request (``chatcmpl-…``, ``resp_…``, ``msg_…``).
        model: the model id the client sent (checked against the loaded model).
        generation: messages (images may still be :class:`~gemma_local.engine.types.ImageRef`),
            sampling, stop sequences, logprobs; ``max_tokens`` is what the client asked for
            (None: the hosted default), capped by the pipeline.
        n: independent choices for the same prompt (seeds ``seed``, ``seed+1``, …).
        web_search: ``web_search_linkup``: ground the answer in search results (see ``grounding``).
        disable_formatting: no "Sources" footer on web-search answers.
        tools: functions the model may call; ``tool_choice`` says whether it must, and
            ``parallel_tool_calls`` whether one answer may make several calls.
        output_format: structured output (None or type ``text``: free text).
        stop_param: the request field that holds the stop sequences, for errors.
        hosted_search: the APIs' own web search tool, offered to the model and run by the
            pipeline through the search hook (see ``hosted_search``).
    """

    endpoint: str
    request_id: str
    model: str
    generation: GenerationRequest
    n: int = 1
    web_search: bool = False
    disable_formatting: bool = False
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None
    stop_param: str = "stop"
    hosted_search: HostedSearch | None = None


@dataclass(frozen=True)
class RequestLimits:
    """What the pipeline lets one request ask for.

    Args:
        max_output_tokens: the cap on output tokens per choice.
        default_seed: the seed of requests that give none (None: a random one each time).
    """

    max_output_tokens: int = DEFAULT_OUTPUT_CAP
    default_seed: int | None = None

    def output_tokens(self, requested: int | None) -> int:
        """Output tokens per choice: what was asked (default 4096), at most the cap."""
        return min(requested or DEFAULT_MAX_TOKENS, self.max_output_tokens)

    def check(self, request: PipelineRequest) -> None:
        """Refuse what no generation should be started for.

        Raises:
            InvalidRequestError: too many stop sequences, or one too long (400, naming the field).
        """
        stops = request.generation.stop
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequestError(
                f"{len(stops)} stop sequences given; at most {MAX_STOP_SEQUENCES} are allowed.",
                param=request.stop_param,
            )
        for i, stop in enumerate(stops):
            if len(stop) > MAX_STOP_LENGTH:
                raise InvalidRequestError(
                    f"Stop sequence {i} is {len(stop)} characters long; at most {MAX_STOP_LENGTH} are allowed.",
                    param=request.stop_param,
                )
