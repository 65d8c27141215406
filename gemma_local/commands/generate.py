"""``gemma-local generate``: one answer to one prompt, streamed to stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from gemma_local.cli_support import (
    CliError,
    echo_base_model_notice,
    engine_options,
    engine_settings,
    friendly_errors,
    open_engine,
)
from gemma_local.commands.prompting import RequestOptions, call_line, open_pipeline, request_options, run


@click.command()
@click.argument("prompt")
@click.option("-s", "--system", help="System instructions (they lead the first user turn).")
@click.option(
    "-i",
    "--image",
    "images",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="An image to ask about (repeatable).",
)
@request_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the text, calls, usage and timings.")
@engine_options
@friendly_errors
def generate(prompt: str, system: str | None, images: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Generate an answer to PROMPT and stream it to stdout (PROMPT '-' reads stdin).

    Function calls (--tools) are printed as JSON lines; with -n, each answer follows a
    "[choice N]" line on stderr.
    """
    from gemma_local.engine import ChatMessage, TextPart
    from gemma_local.images import image_from_path

    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise CliError("The prompt is empty.")
    options = RequestOptions.from_flags(flags)
    parts = (*(image_from_path(p) for p in images), TextPart(prompt))
    messages = ([ChatMessage.text("system", system)] if system else []) + [ChatMessage("user", parts)]
    with open_engine(engine_settings(**flags), default_parallel=1) as engine:
        if not as_json:  # stderr, and never under --json: scripts parse nothing but the JSON
            echo_base_model_notice(flags.get("model"))
        pipeline = open_pipeline(engine, options)
        request = options.request(tuple(messages), engine.model_id)
        try:
            if as_json:
                outcome = run(_whole(pipeline, request))
                click.echo(json.dumps(_json_result(engine.model_id, outcome), ensure_ascii=False))
            else:
                run(_stream(pipeline, request))
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)


async def _whole(pipeline: Any, request: Any) -> Any:
    generation = await pipeline.start(request)
    return await generation.result()


async def _stream(pipeline: Any, request: Any) -> None:
    from gemma_local.pipeline import ChoiceDelta, ChoiceToolCall, ChoiceTruncatedCall

    generation = await pipeline.start(request)
    several = generation.n > 1
    current: int | None = None
    at_line_start, made_call = True, False
    async for event in generation.events():
        if several and event.index != current:
            # Choices interleave as they are generated: label each change of speaker.
            if not at_line_start:
                click.echo("")
            click.echo(f"[choice {event.index}]", err=True)
            current, at_line_start = event.index, True
        if isinstance(event, ChoiceDelta):
            if event.text:
                click.echo(event.text, nl=False)
                at_line_start = event.text.endswith("\n")
        elif isinstance(event, ChoiceToolCall | ChoiceTruncatedCall):
            if not at_line_start:
                click.echo("")
            click.echo(call_line(event.call))
            at_line_start, made_call = True, True
    if not at_line_start or not (several or made_call):
        click.echo("")


def _json_result(model_id: str, outcome: Any) -> dict[str, Any]:
    def choice(c: Any) -> dict[str, Any]:
        return {
            "index": c.index,
            "text": c.text,
            "tool_calls": [{"id": t.id, "name": t.name, "arguments": t.arguments} for t in c.tool_calls],
            "finish_reason": c.finish_reason,
            "stop_sequence": c.stop_sequence,
            # A call cut by --max-tokens: its name and arguments as far as they got.
            "truncated_call": (
                {"name": c.truncated_call.name, "arguments": c.truncated_call.arguments} if c.truncated_call else None
            ),
        }

    first = outcome.choices[0]
    usage, timings = outcome.usage, first.timings
    result: dict[str, Any] = {
        "model": model_id,
        **{k: v for k, v in choice(first).items() if k != "index"},
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "cached_tokens": usage.cached_tokens,
        },
        "timings": {
            "time_to_first_token_s": round(timings.time_to_first_token_s, 4),
            "prompt_s": round(timings.prompt_s, 4),
            "generation_s": round(timings.generation_s, 4),
            "prompt_tokens_per_s": round(timings.prompt_tokens_per_s(usage.prompt_tokens), 2),
            "generation_tokens_per_s": round(timings.generation_tokens_per_s(first.usage.completion_tokens), 2),
        },
    }
    if len(outcome.choices) > 1:
        result["choices"] = [choice(c) for c in outcome.choices]
    if outcome.grounding is not None:
        result["search"] = outcome.grounding.metadata
    return result
