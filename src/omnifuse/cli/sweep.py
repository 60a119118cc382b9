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


SWEEP_KEYS = ("variants", "grid")  # keys only a sweep file has; a recipe has none of them


def is_sweep_file(path: Path) -> bool:
    """Whether ``path`` holds a sweep file rather than a recipe (unreadable files are left to the recipe
    loader, which names the problem)."""
    from omnifuse.errors import OmnifuseError
    from omnifuse.untrusted import read_yaml

    try:
        raw = read_yaml(path, "recipe")
    except OmnifuseError:
        return False
    return isinstance(raw, dict) and any(key in raw for key in SWEEP_KEYS)


def validate_sweep(path: Path, overrides: list[str]) -> None:
    """``omnifuse validate`` on a sweep file: the checks of ``omnifuse sweep --plan`` (every variant's
    recipe, the seeds, the budget), nothing trained."""
    from omnifuse.sweep import check_budget, load_sweep

    sw = load_sweep(path, overrides)
    counts = check_budget(sw)
    budget = f", {sw.spec.budget.samples:,} training samples each" if sw.spec.budget else ""
    console.out.print(
        f"{path}: a sweep file, not a recipe; valid sweep {sw.spec.name!r}: {len(sw.variants)} variants "
        f"({', '.join(counts)}) × seeds {sw.spec.seeds}{budget}; `omnifuse sweep {path} --plan` shows the plan"
    )
