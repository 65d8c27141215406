"""What ``generate`` and ``chat`` share: their request options, and running one request.

Both build a :class:`~gemma_local.pipeline.PipelineRequest` from the conversation and the
options, and run it through the same :class:`~gemma_local.pipeline.Pipeline` the server uses,
so the search hook (with its "Sources" footer), tools, structured output and ``n`` choices
behave exactly as they do over HTTP. Text streams to stdout as it is generated; a function
call is printed as one JSON line (``{"type": "tool_call", "id", "name", "arguments"}``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from gemma_local.cli_support import CliError
from gemma_local.commands.search_options import search_options, search_settings

#: The hosted API's sampling defaults, as the CLI shows them.
DEFAULT_TEMPERATURE = 0.7


def request_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Sampling, output, tools, ``-n`` and search options (``generate`` and ``chat``)."""
    options = [
        click.option(
            "--max-tokens", type=click.IntRange(1), default=512, show_default=True, help="Most tokens to generate."
        ),
        click.option(
            "--temperature",
            type=click.FloatRange(0, 2),
            default=DEFAULT_TEMPERATURE,
            show_default=True,
            help="0 is greedy.",
        ),
        click.option("--top-p", type=click.FloatRange(0, 1), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="0 disables top-k."),
        click.option("--seed", type=int, help="Same seed + same prompt = same output."),
        click.option("--stop", multiple=True, help="Stop sequence (repeatable, at most 16); never printed."),
        click.option(
            "-n",
            "n",
            type=click.IntRange(1, 16),
            default=1,
            show_default=True,
            help="Independent answers to generate (seeds seed, seed+1, …).",
        ),
        click.option(
            "--json-schema",
            "json_schema",
            metavar="FILE|JSON",
            help="Answer with JSON that follows this JSON Schema (a file, or the schema itself).",
        ),
        click.option(
            "--tools",
            "tools_file",
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="Functions the model may call: a JSON list of {name, description, parameters} (OpenAI's "
            "and Anthropic's tool shapes work too). Calls are printed as JSON lines.",
        ),
        click.option(
            "--tool-choice",
            default="auto",
            show_default=True,
            metavar="auto|required|none|NAME",
            help="With --tools: whether the model must call a function (NAME: that one).",
        ),
        click.option(
            "--search", is_flag=True, help="Ground the answer in search results (local index, ZIM, online providers)."
        ),
        click.option("--disable-formatting", is_flag=True, help="With --search: no 'Sources' footer."),
    ]
    for option in reversed(options):
        func = option(func)
    return search_options(func)


@dataclass(frozen=True)
class RequestOptions:
    """The request options of one ``generate`` or ``chat`` command, parsed and checked."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    n: int
    output_format: Any  # OutputFormat | None (the pipeline is imported lazily: fast --help)
    tools: tuple[Any, ...]
    tool_choice: Any
    search: bool
    disable_formatting: bool
    search_flags: dict[str, Any]

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> RequestOptions:
        """Pop the request options out of a command's keyword arguments (the rest are engine flags).

        Raises:
            CliError: an unreadable or invalid schema or tools file, or an unknown tool choice.
        """
        from gemma_local.pipeline import OutputFormat
        from gemma_local.pipeline.conversation import named_tool

        schema_value = flags.pop("json_schema", None)
        tools = load_tools(flags.pop("tools_file", None))
        choice = flags.pop("tool_choice", "auto")
        if choice not in ("auto", "required", "none"):
            try:
                choice = named_tool(choice, tools)
            except Exception as e:
                raise CliError(f"--tool-choice {choice}: no such function in --tools.") from e
        elif choice == "required" and not tools:
            raise CliError("--tool-choice required needs --tools.")
        return cls(
            max_tokens=flags.pop("max_tokens"),
            temperature=flags.pop("temperature"),
            top_p=flags.pop("top_p"),
            top_k=flags.pop("top_k"),
            seed=flags.pop("seed"),
            stop=tuple(flags.pop("stop")),
            n=flags.pop("n"),
            output_format=(
                OutputFormat(type="json_schema", schema=load_json_schema(schema_value), param="--json-schema")
                if schema_value
                else None
            ),
            tools=tools,
            tool_choice=choice,
            search=flags.pop("search"),
            disable_formatting=flags.pop("disable_formatting"),
            search_flags={k: flags.pop(k) for k in ("search_providers", "searxng_url", "search_timeout") if k in flags},
        )

    def search_chain(self) -> Any:
        """The provider chain when --search is on, else None."""
        if not self.search:
            return None
        from gemma_local.search import default_chain

        return default_chain(search_settings(**self.search_flags))

    def request(self, messages: tuple[Any, ...], model_id: str) -> Any:
        """The pipeline request for ``messages`` with these options."""
        from gemma_local.engine import GenerationRequest, SamplingParams
        from gemma_local.pipeline import PipelineRequest
        from gemma_local.pipeline.conversation import new_id

        sampling = SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        generation = GenerationRequest(messages=messages, sampling=sampling, max_tokens=self.max_tokens, stop=self.stop)
        return PipelineRequest(
            endpoint="cli",
            request_id=new_id("cli-"),
            model=model_id,
            generation=generation,
            n=self.n,
            web_search=self.search,
            disable_formatting=self.disable_formatting,
            tools=self.tools,
            tool_choice=self.tool_choice,
            output_format=self.output_format,
            stop_param="--stop",
        )


def load_json_schema(value: str) -> dict[str, Any]:
    """A JSON Schema given inline (``{"type": "object", …}``) or as a file path.

    Raises:
        CliError: neither valid JSON nor a readable file of JSON, or not a JSON object.
    """
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            raise CliError(f"--json-schema: cannot read {value}: {e.strerror or e}.") from e
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise CliError(f"--json-schema: not valid JSON ({e}).") from e
    if not isinstance(schema, dict):
        raise CliError("--json-schema: a JSON Schema is a JSON object.")
    return schema


def load_tools(path: str | None) -> tuple[Any, ...]:
    """The functions in a tools file: a JSON list (or ``{"tools": [...]}``) of function definitions.

    Each may be ``{"name", "description", "parameters"}``, OpenAI Chat's
    ``{"type": "function", "function": {...}}`` or Anthropic's ``{"name", "input_schema"}``.

    Raises:
        CliError: the file is unreadable, not JSON, or a definition has no name.
    """
    if path is None:
        return ()
    from gemma_local.pipeline.conversation import function_tool

    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as e:
        raise CliError(f"--tools: cannot read {path}: {e.strerror or e}.") from e
    except ValueError as e:
        raise CliError(f"--tools: {path} is not valid JSON ({e}).") from e
    if isinstance(data, dict):
        data = data.get("tools", [data])
    if not isinstance(data, list):
        raise CliError(f"--tools: {path} must hold a JSON list of function definitions.")
    tools = []
    for i, item in enumerate(data):
        spec = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise CliError(f"--tools: definition {i} in {path} has no name.")
        parameters = spec.get("parameters", spec.get("input_schema"))
        tools.append(function_tool(spec["name"], spec.get("description"), parameters, spec.get("strict")))
    return tuple(tools)


def open_pipeline(engine: Any, options: RequestOptions) -> Any:
    """The request pipeline over ``engine`` for one command (outputs up to the slot's context)."""
    from gemma_local.pipeline import Pipeline, RequestLimits

    limits = RequestLimits(max_output_tokens=engine.info.n_ctx_per_slot, default_seed=engine.default_seed)
    return Pipeline(engine, limits, search_chain=options.search_chain())


def call_line(call: Any, choice: int | None = None) -> str:
    """A function call as the one JSON line the CLI prints for it (a call cut by --max-tokens:
    type ``truncated_tool_call``, its arguments the JSON text as far as it got)."""
    from gemma_local.pipeline import TruncatedCall

    kind = "truncated_tool_call" if isinstance(call, TruncatedCall) else "tool_call"
    line: dict[str, Any] = {"type": kind, "id": call.id, "name": call.name, "arguments": call.arguments}
    if choice is not None:
        line["choice"] = choice
    return json.dumps(line, ensure_ascii=False)


def run(coroutine: Any) -> Any:
    """Run one request to its end on a fresh event loop (Ctrl-C cancels it, then raises)."""
    return asyncio.run(coroutine)
