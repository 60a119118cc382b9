"""``omnifuse validate`` and ``omnifuse train``: check a recipe, train it into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from omnifuse.cli import console
from omnifuse.cli.common import Overrides, Progress, app
from omnifuse.cli.render import print_classifier
from omnifuse.errors import OmnifuseError
from omnifuse.progress import peak_rss_gb


def _describe_generate(r) -> str:
    stages = ", ".join(
        f"{s.name} ({s.steps or s.epochs} {'steps' if s.steps else 'epochs'})" for s in r.stages
    )
    return f"valid recipe {r.name!r}; stages: {stages}"


def _describe_classifier(r) -> str:
    mods = ", ".join(f"{m} ({s.type})" for m, s in sorted(r.model.encoders.items()))
    dp = f"; DP-SGD at ε {r.privacy.target_epsilon}" if r.privacy else ""
    return f"valid classifier recipe {r.name!r}; {r.model.fusion.type} fusion of {mods}, {r.train.epochs} epochs{dp}"


def _describe_align(r) -> str:
    modalities = " ↔ ".join(f"{m} ({e.type})" for m, e in r.model.encoders.items())
    return f"valid alignment recipe {r.name!r}; method {r.method.type}, {modalities}"


def _train_generate(r, run_dir: Path, resume: bool, progress: bool, tensorboard: bool) -> None:
    from omnifuse.training.loop import train as run_training

    res = run_training(
        r, run_dir, resume=resume, console=console.err, progress=progress, tensorboard=tensorboard
    )
    if res.already_finished:
        _say_finished(run_dir)
        return
    console.out.print(
        f"trained {r.name} in {res.seconds:.1f} s ({res.steps} steps, final loss {res.final_loss or float('nan'):.4f}); "
        f"run directory: {run_dir}  peak memory {peak_rss_gb():.2f} GB"
    )


def _train_classifier(r, run_dir: Path, resume: bool, progress: bool, tensorboard: bool) -> None:
    from omnifuse.training.classifier import train_classifier

    res = train_classifier(r, run_dir, resume=resume, console=console.err, progress=progress)
    if res.already_finished:
        _say_finished(run_dir)
    print_classifier(run_dir)


def _train_align(r, run_dir: Path, resume: bool, progress: bool, tensorboard: bool) -> None:
    from omnifuse.alignment.run import headline, train_align

    result = train_align(r, run_dir, progress=progress, resume=resume)
    if result.already_finished:
        _say_finished(run_dir)
        console.out.print(f"{r.name} ({r.method.type}): {headline(result.evaluation)}")
        return
    console.out.print(
        f"trained {r.name} ({r.method.type}) in {result.seconds:.1f} s: {headline(result.evaluation)}; "
        f"run directory: {run_dir}"
    )


def _say_finished(run_dir: Path) -> None:
    console.out.print(
        f"{run_dir} finished training already; nothing was trained or changed (its weights are intact). "
        "Evaluate it with `omnifuse eval`, or train again into a new --out"
    )


def _recipe_kinds() -> dict[type, tuple]:
    """Each recipe class → (its line for `validate`, its trainer for `train`)."""
    from omnifuse.recipe import AlignRecipe, ClassifierRecipe, Recipe

    return {
        Recipe: (_describe_generate, _train_generate),
        ClassifierRecipe: (_describe_classifier, _train_classifier),
        AlignRecipe: (_describe_align, _train_align),
    }


@app.command()
def validate(recipe: Path, set_: Overrides = None) -> None:
    """Check a recipe file: keys, types, component names, stages (a sweep file: every variant, the
    seeds and the budget)."""
    from omnifuse.cli.sweep import is_sweep_file, validate_sweep
    from omnifuse.recipe import load_recipe

    if is_sweep_file(recipe):
        validate_sweep(recipe, set_ or [])
        return
    r = load_recipe(recipe, set_ or [])
    describe, _ = _recipe_kinds()[type(r)]
    console.out.print(f"{recipe}: {escape(describe(r))}")


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
) -> None:
    """Train a recipe through all its stages into a run directory (a classifier recipe: extract or load
    the cached features, train the fusion head, evaluate it; an alignment recipe: fit the method on cached
    features and evaluate retrieval or zero-shot accuracy)."""
    from omnifuse.recipe import Recipe, load_recipe

    r = load_recipe(recipe, set_ or [])
    if tensorboard and not isinstance(r, Recipe):
        raise OmnifuseError(
            "--tensorboard is for LLM recipes; classifier and alignment runs log their epochs to "
            "RUN/metrics.jsonl (plotted in RUN/report.md)"
        )
    _, trainer = _recipe_kinds()[type(r)]
    trainer(r, out_dir or Path("runs") / r.name, resume, progress, tensorboard)
