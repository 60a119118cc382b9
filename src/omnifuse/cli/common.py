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
