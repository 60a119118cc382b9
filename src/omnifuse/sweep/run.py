"""Run a sweep: every variant × seed trained and evaluated into ``OUT/<variant>/seed-<s>``.

What one run does and records is its task's (:meth:`omnifuse.tasks.Task.sweep_run`): multimodal LLM
recipes are trained, evaluated (VQA accuracy) and timed (latency per answer); classifier recipes
(``task: classify``) record accuracy, macro F1, ε under DP-SGD and the missing-modality accuracies;
alignment recipes (``task: align``) the mean R@1 of both directions and R@1/5/10 per direction. Every
variant of a sweep must be of one task.

A finished run (its result line in ``results.jsonl`` and the same resolved recipe) is skipped when the
sweep runs again; a run that was interrupted resumes from its checkpoint. ``results.jsonl`` is
rewritten atomically after each run, so a crash loses at most the run in progress.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console

from omnifuse.atomic import atomic_write_text
from omnifuse.errors import OmnifuseError
from omnifuse.eval.runfiles import read_records
from omnifuse.recipe import Recipe, dump_recipe, parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.sweep.spec import Sweep
from omnifuse.tasks import Task, task_for
from omnifuse.tasks.base import SweepRun

RESULTS = "results.jsonl"


def training_samples(recipe) -> int:
    """Samples a recipe trains on in total, as its task counts them (an LLM recipe: steps × batch size ×
    accumulation, summed over stages; a classifier or alignment recipe: epochs × training samples)."""
    return task_for(recipe).training_samples(recipe)


def sweep_task(sweep: Sweep) -> Task:
    """The one task of every variant (a table compares like with like)."""
    tasks = {v.name: task_for(v.recipe) for v in sweep.variants}
    names = sorted({t.name for t in tasks.values()})
    if len(names) > 1:
        listed = ", ".join(f"{v}: {t.name}" for v, t in tasks.items())
        raise OmnifuseError(
            f"sweep {sweep.spec.name!r} mixes tasks ({listed}); a sweep compares variants of one task, "
            "so split it into one sweep per task"
        )
    return next(iter(tasks.values()))


def check_budget(sweep: Sweep) -> dict[str, int]:
    sweep_task(sweep)
    counts = {v.name: training_samples(v.recipe) for v in sweep.variants}
    budget = sweep.spec.budget
    if budget is not None:
        off = {name: n for name, n in counts.items() if n != budget.samples}
        if off:
            listed = ", ".join(f"{name}: {n}" for name, n in off.items())
            raise OmnifuseError(
                f"sweep {sweep.spec.name!r} fixes the budget at {budget.samples} training samples, but "
                f"{listed} (an LLM recipe: steps × batch_size × grad_accum summed over stages; a classifier or "
                "alignment recipe: epochs × training samples); adjust their steps or epochs, or remove the budget"
            )
    return counts


def _step_seconds(run: RunDir) -> float:
    steps = read_records(run.metrics_file, {"seconds?": float}, "training metrics")
    return sum(step.get("seconds", 0.0) for step in steps)


def _same_recipe(stored: str | None, recipe: Recipe) -> bool:
    """Compared as recipes, not text: a dump made before a new optional field existed still matches."""
    if stored is None:
        return False
    try:
        return parse_recipe(yaml.safe_load(stored)) == recipe
    except (OmnifuseError, yaml.YAMLError):
        return False


def read_results(out: Path) -> list[dict]:
    path = out / RESULTS
    if not path.is_file():
        return []
    return read_records(path, {"variant": str, "seed": int, "recipe?": str}, "sweep results")


def run_sweep(
    sweep: Sweep,
    out: Path,
    console: Console | None = None,
    progress: bool = True,
    parts_factory: Callable[[], dict] | None = None,
) -> list[dict]:
    """Train and evaluate every variant × seed not finished yet; returns all result records."""
    console = console or Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples_per_variant = check_budget(sweep)
    atomic_write_text(out / "sweep.json", json.dumps(sweep.spec.model_dump(mode="json"), indent=2))
    results = read_results(out)
    done = {(r["variant"], r["seed"]): r for r in results}
    # Seed by seed, so that an interrupted sweep already compares every variant on the first seeds.
    jobs = [(v, s) for s in sweep.spec.seeds for v in sweep.variants]
    for k, (variant, seed) in enumerate(jobs, 1):
        recipe = variant.with_seed(seed)
        run = RunDir(out / variant.name / f"seed-{seed}")
        previous = done.get((variant.name, seed))
        if previous is not None and _same_recipe(previous.get("recipe"), recipe):
            console.print(f"[{k}/{len(jobs)}] {variant.name} seed {seed}: done before, skipped")
            continue
        results = [r for r in results if (r["variant"], r["seed"]) != (variant.name, seed)]
        resume = run.checkpoint.exists() and previous is None
        console.print(
            f"[{k}/{len(jobs)}] {variant.name} seed {seed}: {'resuming' if resume else 'training'} into {run.path}"
        )
        if run.path.exists() and not resume:
            if run.recipe_file.is_file() and not _same_recipe(run.recipe_file.read_text(), recipe):
                raise OmnifuseError(
                    f"{run.path} holds a run of another recipe (the sweep file changed since it ran); "
                    "move it away or give the sweep another --out, so that no run is overwritten"
                )
            # The same recipe without a checkpoint or result yet (killed before its first save).
            shutil.rmtree(run.path)
        job = SweepRun(run, resume, console, progress, parts_factory, sweep.spec.eval.latency_samples)
        record = {
            "variant": variant.name,
            "seed": seed,
            **task_for(recipe).sweep_run(recipe, job),
            "training_samples": samples_per_variant[variant.name],
            # Summed over the logged steps, so a resumed run counts the steps of every attempt.
            "train_seconds": round(_step_seconds(run), 2),
            "resumed": resume,
            "recipe": dump_recipe(recipe),
        }
        results.append(record)
        atomic_write_text(out / RESULTS, "".join(json.dumps(r) + "\n" for r in results))
    order = {(v.name, s): i for i, (v, s) in enumerate(jobs)}
    return sorted(
        (r for r in results if (r["variant"], r["seed"]) in order),
        key=lambda r: order[r["variant"], r["seed"]],
    )
