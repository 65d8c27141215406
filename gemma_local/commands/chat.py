"""``gemma-local chat``: an interactive conversation in the terminal."""

from __future__ import annotations

from typing import Any

import click

from gemma_local.cli_support import (
    echo_base_model_notice,
    engine_options,
    engine_settings,
    friendly_errors,
    open_engine,
)
from gemma_local.commands.prompting import RequestOptions, call_line, open_pipeline, request_options, run
from gemma_local.errors import GemmaLocalError


@click.command()
@click.option("-s", "--system", help="System instructions for the whole session.")
@request_options
@engine_options
@friendly_errors
def chat(system: str | None, **flags: Any) -> None:
    """Chat interactively. /image PATH attaches an image to your next message, /reset clears the
    history, /exit quits, Ctrl-C stops an answer.

    With -n, every answer is shown and the first is kept in the history; function calls
    (--tools) are shown as JSON lines and kept as the assistant's turn.
    """
    from gemma_local.engine import ChatMessage, ImagePart, TextPart
    from gemma_local.images import image_from_path

    options = RequestOptions.from_flags(flags)
    history: list[ChatMessage] = []
    pending_images: list[ImagePart] = []
    with open_engine(engine_settings(**flags), default_parallel=1) as engine:
        echo_base_model_notice(flags.get("model"))
        pipeline = open_pipeline(engine, options)
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
            answer = _Answer()
            try:
                run(answer.collect(pipeline, options.request(tuple(messages), engine.model_id)))
            except GemmaLocalError as e:
                history.pop()
                click.echo(f"error: {e.message}", err=True)
                continue
            except KeyboardInterrupt:
                click.echo(" [stopped]", nl=False)
            click.echo("")
            history.append(answer.message())


class _Answer:
    """One turn's answer as it streams: printed at once, kept (the first choice) for the history."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[Any] = []
        self._current: int | None = None

    async def collect(self, pipeline: Any, request: Any) -> None:
        from gemma_local.pipeline import ChoiceDelta, ChoiceToolCall

        generation = await pipeline.start(request)
        async for event in generation.events():
            if generation.n > 1 and event.index != self._current:
                if self._current is not None:
                    click.echo("")
                click.echo(f"[choice {event.index}]", err=True)
                self._current = event.index
            if isinstance(event, ChoiceDelta):
                click.echo(event.text, nl=False)
                if event.index == 0:
                    self.text.append(event.text)
            elif isinstance(event, ChoiceToolCall):
                click.echo(call_line(event.call, event.index if generation.n > 1 else None))
                if event.index == 0:
                    self.calls.append(event.call)

    def message(self) -> Any:
        from gemma_local.engine import TextPart
        from gemma_local.pipeline.conversation import assistant_message

        return assistant_message([TextPart("".join(self.text))], self.calls)
