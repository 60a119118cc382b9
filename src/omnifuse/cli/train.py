"""``omnifuse validate`` and ``omnifuse train``: check a recipe, train it into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from omnifuse.cli import console
from omnifuse.cli.common import Device, Dtype, Nproc, Overrides, Progress, app, quiet_unless_main, relaunch
from omnifuse.cli.render import print_printout
from omnifuse.errors import OmnifuseError


def _say_finished(run_dir: Path) -> None:
    console.out.print(
        f"{run_dir} finished training already; nothing was trained or changed (its weights are intact). "
        "Evaluate it with `omnifuse eval`, or train again into a new --out"
    )


@app.command()
def validate(recipe: Path, set_: Overrides = None) -> None:
    """Check a recipe file: keys, types, component names, stages (a sweep file: every variant, the
    seeds and the budget)."""
    from omnifuse.cli.sweep import is_sweep_file, validate_sweep
    from omnifuse.recipe import load_recipe
    from omnifuse.tasks import task_for

    if is_sweep_file(recipe):
        validate_sweep(recipe, set_ or [])
        return
    r = load_recipe(recipe, set_ or [])
    if r.runtime.quantize != "none":  # QLoRA: a CUDA GPU with bitsandbytes, or one paragraph here
        from omnifuse.models.quantize import training_quantize

        training_quantize(r.runtime)
    console.out.print(f"{recipe}: {escape(task_for(r).describe(r))}")


@app.command()
def train(
    recipe: Path,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="run directory (default runs/<recipe name>)")
    ] = None,
    set_: Overrides = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    tensorboard: Annotated[
        bool, typer.Option(help="also log to RUN/tensorboard (needs tensorboard; LLM recipes)")
    ] = False,
    progress: Progress = True,
    device: Device = None,
    dtype: Dtype = None,
    nproc: Nproc = None,
) -> None:
    """Train a recipe through all its stages into a run directory (a classifier recipe: extract or load
    the cached features, train the fusion head, evaluate it; an alignment recipe: fit the method on cached
    features and evaluate retrieval or zero-shot accuracy)."""
    from omnifuse.recipe import load_recipe
    from omnifuse.runtime import current_world
    from omnifuse.tasks import task_for

    runtime = [f"runtime.device={device}"] * bool(device) + [f"runtime.dtype={dtype}"] * bool(dtype)
    r = load_recipe(recipe, [*(set_ or []), *runtime])
    world = current_world()
    several = world.distributed or (nproc or 1) > 1
    if several and task_for(r).name != "generate":  # refused before any process starts
        raise OmnifuseError(
            f"task {task_for(r).name} trains in one process (its models are small; DP-SGD runs through Opacus "
            "in one process): launch it without --nproc, torchrun or accelerate launch"
        )
    if several and not world.distributed:
        relaunch(nproc)
    quiet_unless_main()
    run_dir = out_dir or Path("runs") / r.name
    done = task_for(r).train(
        r, run_dir, resume=resume, console=console.err, progress=progress, tensorboard=tensorboard
    )
    if done.already_finished:
        _say_finished(run_dir)
    print_printout(done.printout)
