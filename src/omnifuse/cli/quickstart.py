"""``omnifuse quickstart``: the quickstart pipeline (:func:`omnifuse.quickstart.run_quickstart`), printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omnifuse.cli import console
from omnifuse.cli.common import Overrides, Progress, app
from omnifuse.cli.render import print_quickstart


@app.command()
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/quickstart"),
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Train the quickstart recipe on easy-vqa, evaluate it against a blind baseline, report, chat."""
    from omnifuse.quickstart import run_quickstart

    result = run_quickstart(out_dir, set_ or [], progress=progress, console=console.err)
    print_quickstart(result)
