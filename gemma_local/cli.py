"""The ``gemma-local`` command line: the root group; each command lives in ``commands/``.

Expected failures (missing model, bad options, corrupt files) print one line and exit 1; pass
``--debug`` (or set GEMMA_LOCAL_DEBUG=1) to see the traceback instead.
"""

from __future__ import annotations

import logging

import click


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


def _register_commands() -> None:
    # Each command lives in its own module under gemma_local/commands/.
    from gemma_local.commands.chat import chat
    from gemma_local.commands.generate import generate
    from gemma_local.commands.index import index
    from gemma_local.commands.info import info
    from gemma_local.commands.models import models
    from gemma_local.commands.ps import ps
    from gemma_local.commands.pull import pull
    from gemma_local.commands.serve import serve

    main.add_command(generate)
    main.add_command(chat)
    main.add_command(models)
    main.add_command(pull)
    main.add_command(index)
    main.add_command(info)
    main.add_command(serve)
    main.add_command(ps)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
