"""The ``gemma-local`` command line: generate, chat, models, serve (and more as they land).

Expected failures (missing model, bad options, corrupt files) print one line and exit 1; pass
``--debug`` (or set GEMMA_LOCAL_DEBUG=1) to see the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
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
from gemma_local.commands.search_options import search_options, search_settings
from gemma_local.errors import GemmaLocalError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and llama.cpp's log.")
@click.version_option(package_name="gemma-local")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """gemma-local: run Google's Gemma 3 on this machine, offline."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        # llama.cpp's own log is for --debug; our errors already quote what matters from it.
        logging.getLogger("gemma_local.llama_cpp").setLevel(logging.CRITICAL)


def _sampling_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--max-tokens", type=click.IntRange(1), default=512, show_default=True, help="Most tokens to generate."
        ),
        click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True, help="0 is greedy."),
        click.option("--top-p", type=click.FloatRange(0, 1), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="0 disables top-k."),
        click.option("--seed", type=int, help="Same seed + same prompt = same output."),
        click.option("--stop", multiple=True, help="Stop sequence (repeatable); never printed."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _sampling(temperature: float, top_p: float, top_k: int, seed: int | None):
    from gemma_local.engine import SamplingParams

    return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


def _grounding_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--search", is_flag=True, help="Ground the answer in search results (local index, ZIM, online providers)."
        ),
        click.option("--disable-formatting", is_flag=True, help="With --search: no 'Sources' footer."),
    ]
    for option in reversed(options):
        func = option(func)
    return search_options(func)


def _search_chain(search: bool, flags: dict[str, Any]):
    """The provider chain when --search is on (built once per command), else None."""
    search_flags = {k: flags.pop(k) for k in ("search_providers", "searxng_url", "search_timeout") if k in flags}
    if not search:
        return None
    from gemma_local.search import default_chain

    return default_chain(search_settings(**search_flags))


@main.command()
@click.argument("prompt")
@click.option("-s", "--system", help="System instructions (folded into the first user turn).")
@click.option(
    "-i",
    "--image",
    "images",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="An image to ask about (repeatable).",
)
@_sampling_options
@_grounding_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, usage and timings.")
@engine_options
@friendly_errors
def generate(
    prompt: str,
    system: str | None,
    images: tuple[str, ...],
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stop: tuple[str, ...],
    search: bool,
    disable_formatting: bool,
    as_json: bool,
    **engine_flags: Any,
) -> None:
    """Generate an answer to PROMPT and stream it to stdout (PROMPT '-' reads stdin)."""
    from gemma_local.engine import ChatMessage, Finished, GenerationRequest, TextDelta, TextPart
    from gemma_local.images import image_from_path

    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise CliError("The prompt is empty.")
    chain = _search_chain(search, engine_flags)
    parts = (*(image_from_path(p) for p in images), TextPart(prompt))
    messages = ([ChatMessage.text("system", system)] if system else []) + [ChatMessage("user", parts)]
    request = GenerationRequest(
        messages=tuple(messages),
        sampling=_sampling(temperature, top_p, top_k, seed),
        max_tokens=max_tokens,
        stop=tuple(stop),
    )
    with open_engine(engine_settings(**engine_flags), default_parallel=1) as engine:
        if not as_json:  # stderr, and never under --json: scripts parse nothing but the JSON
            echo_base_model_notice(engine_flags.get("model"))
        grounding = None
        if chain is not None:
            from gemma_local.grounding import ground

            grounding = ground(request, engine, chain, disable_formatting=disable_formatting)
            request = grounding.request
        stream = engine.submit(request)
        text: list[str] = []
        final: Finished | None = None
        try:
            for event in stream:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    if not as_json:
                        click.echo(event.text, nl=False)
                elif isinstance(event, Finished):
                    final = event
        except KeyboardInterrupt:
            stream.cancel()
            click.echo("", err=True)
            sys.exit(130)
        assert final is not None
        if final.finish_reason == "error":
            raise CliError(f"Generation failed: {final.error}")
        footer = grounding.footer if grounding is not None else None
        if footer and not as_json:
            click.echo(footer, nl=False)
        if as_json:
            result = {
                "model": engine.model_id,
                "text": "".join(text) + (footer or ""),
                "finish_reason": final.finish_reason,
                "stop_sequence": final.stop_sequence,
                "usage": {
                    "prompt_tokens": final.usage.prompt_tokens,
                    "completion_tokens": final.usage.completion_tokens,
                    "total_tokens": final.usage.total_tokens,
                    "cached_tokens": final.usage.cached_tokens,
                },
                "timings": {
                    "time_to_first_token_s": round(final.timings.time_to_first_token_s, 4),
                    "prompt_s": round(final.timings.prompt_s, 4),
                    "generation_s": round(final.timings.generation_s, 4),
                    "prompt_tokens_per_s": round(final.timings.prompt_tokens_per_s(final.usage.prompt_tokens), 2),
                    "generation_tokens_per_s": round(
                        final.timings.generation_tokens_per_s(final.usage.completion_tokens), 2
                    ),
                },
            }
            if grounding is not None:
                result["search"] = grounding.metadata
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            click.echo("")


@main.command()
@click.option("-s", "--system", help="System instructions for the whole session.")
@_sampling_options
@_grounding_options
@engine_options
@friendly_errors
def chat(
    system: str | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stop: tuple[str, ...],
    search: bool,
    disable_formatting: bool,
    **engine_flags: Any,
) -> None:
    """Chat interactively. /image PATH attaches an image to your next message, /reset clears the
    history, /exit quits, Ctrl-C stops an answer."""
    from gemma_local.engine import ChatMessage, GenerationRequest, ImagePart, TextDelta, TextPart
    from gemma_local.images import image_from_path

    history: list[ChatMessage] = []
    pending_images: list[ImagePart] = []
    sampling = _sampling(temperature, top_p, top_k, seed)
    chain = _search_chain(search, engine_flags)
    with open_engine(engine_settings(**engine_flags), default_parallel=1) as engine:
        echo_base_model_notice(engine_flags.get("model"))
        click.echo(
            f"Chatting with {engine.model_id}. /image PATH attaches an image, /reset clears the history, /exit quits.",
            err=True,
        )
        while True:
            try:
                line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
            except (EOFError, click.Abort):
                click.echo("", err=True)
                return
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit", "/bye"):
                return
            if line == "/reset":
                history.clear()
                pending_images.clear()
                click.echo("(history cleared)", err=True)
                continue
            if line.startswith("/image"):
                path = line.removeprefix("/image").strip()
                try:
                    pending_images.append(image_from_path(path))
                except GemmaLocalError as e:
                    click.echo(f"error: {e.message}", err=True)
                    continue
                click.echo(f"(image attached: {path})", err=True)
                continue
            history.append(ChatMessage("user", (*pending_images, TextPart(line))))
            pending_images.clear()
            messages = ([ChatMessage.text("system", system)] if system else []) + history
            request = GenerationRequest(messages=tuple(messages), sampling=sampling, max_tokens=max_tokens, stop=stop)
            footer = None
            try:
                if chain is not None:
                    from gemma_local.grounding import ground

                    grounding = ground(request, engine, chain, disable_formatting=disable_formatting)
                    request, footer = grounding.request, grounding.footer
                stream = engine.submit(request)
            except GemmaLocalError as e:
                history.pop()
                click.echo(f"error: {e.message}", err=True)
                continue
            answer: list[str] = []
            try:
                for event in stream:
                    if isinstance(event, TextDelta):
                        answer.append(event.text)
                        click.echo(event.text, nl=False)
            except KeyboardInterrupt:
                stream.cancel()
                click.echo(" [stopped]", nl=False)
            if footer:
                click.echo(footer, nl=False)
            click.echo("")
            history.append(ChatMessage.text("assistant", "".join(answer)))


def _register_commands() -> None:
    # Each noun lives in its own module under gemma_local/commands/.
    from gemma_local.commands.index import index
    from gemma_local.commands.info import info
    from gemma_local.commands.models import models
    from gemma_local.commands.pull import pull
    from gemma_local.commands.serve import serve

    main.add_command(models)
    main.add_command(pull)
    main.add_command(index)
    main.add_command(info)
    main.add_command(serve)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
