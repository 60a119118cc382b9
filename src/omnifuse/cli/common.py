"""The Typer application every verb module registers on, and the options the verbs share."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="Build, train, evaluate and chat with multimodal LLMs from pretrained parts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override a recipe value: dotted.key=value (repeatable), e.g. stages.0.steps=20"
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]


def _print_version(value: bool) -> None:
    if value:
        from omnifuse import __version__

        typer.echo(f"omnifuse {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="print the version and exit"),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="on an error, show the traceback (anywhere on the command line)"),
    ] = False,
) -> None:
    # --debug is taken off the command line by omnifuse.cli.main before parsing (so that it works after the
    # verb too); it is declared here so that `omnifuse --help` shows it.
    del version, debug
