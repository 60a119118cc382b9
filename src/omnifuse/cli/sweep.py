"""``omnifuse sweep``: train and evaluate recipe variants on the same data and seeds, and compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omnifuse.cli import console
from omnifuse.cli.common import Overrides, Progress, app
from omnifuse.cli.render import print_sweep_plan, print_sweep_results


@app.command()
def sweep(
    sweep_file: Path,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="sweep folder (default runs/sweeps/<sweep name>)")
    ] = None,
    set_: Overrides = None,
    plan: Annotated[bool, typer.Option(help="print the variants and their budgets; train nothing")] = False,
    progress: Progress = True,
) -> None:
    """Train and evaluate recipe variants on the same data and seeds; compare them (mean ± 95 % CI)."""
    from omnifuse.sweep import check_budget, load_sweep, run_sweep, write_report

    sw = load_sweep(sweep_file, set_ or [])
    folder = out_dir or Path("runs") / "sweeps" / sw.spec.name
    print_sweep_plan(sw, check_budget(sw))
    if plan:
        return
    records = run_sweep(sw, folder, console=console.err, progress=progress)
    command = " ".join(["omnifuse sweep", str(sweep_file), *(f"--set {x}" for x in set_ or [])])
    rows = write_report(folder, sw.spec.name, records, command)
    print_sweep_results(sw, rows, folder)
