"""Run a sweep: every variant × seed trained and evaluated into ``OUT/<variant>/seed-<s>``.

Multimodal LLM recipes are trained, evaluated (VQA accuracy) and timed (latency per answer); classifier
recipes (``task: classify``) are trained on their cached features and record accuracy, macro F1, ε under
DP-SGD and the missing-modality accuracies. The runner is chosen by the recipe's class (``RUNNERS``).

A finished run (its result line in ``results.jsonl`` and the same resolved recipe) is skipped when the
sweep runs again; a run that was interrupted resumes from its checkpoint. ``results.jsonl`` is
rewritten atomically after each run, so a crash loses at most the run in progress.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console
from safetensors import safe_open

from omnifuse.atomic import atomic_write_text
from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.runfiles import read_records
from omnifuse.eval.runner import evaluate_run
from omnifuse.eval.vqa import VQAResult
from omnifuse.generation.engine import Engine, GenerationConfig, generation_config
from omnifuse.recipe import ClassifierRecipe, Recipe, dump_recipe, parse_recipe
from omnifuse.rundir import RunDir, load_model
from omnifuse.sweep.spec import Sweep
from omnifuse.training.loop import stage_steps, train

RESULTS = "results.jsonl"


def training_samples(recipe: Recipe | ClassifierRecipe) -> int:
    """Samples a recipe trains on in total: steps × batch size × accumulation, summed over stages (a
    classifier: epochs × training samples)."""
    if isinstance(recipe, ClassifierRecipe):
        n = len(load_data(recipe.data.train))
        return recipe.train.epochs * min(n, recipe.data.train_limit or n)
    sizes: dict[str, int] = {}
    total = 0
    for stage in recipe.stages:
        n = 0
        if stage.steps is None:
            ref = stage.data or recipe.data.train
            if ref not in sizes:
                sizes[ref] = len(load_data(ref))
            n = sizes[ref]
        total += stage_steps(stage, n) * stage.batch_size * stage.grad_accum
    return total


def check_budget(sweep: Sweep) -> dict[str, int]:
    counts = {v.name: training_samples(v.recipe) for v in sweep.variants}
    budget = sweep.spec.budget
    if budget is not None:
        off = {name: n for name, n in counts.items() if n != budget.samples}
        if off:
            listed = ", ".join(f"{name}: {n}" for name, n in off.items())
            raise OmnifuseError(
                f"sweep {sweep.spec.name!r} fixes the budget at {budget.samples} training samples, but "
                f"{listed} (steps × batch_size × grad_accum summed over stages); adjust their steps "
                "or remove the budget"
            )
    return counts


def _saved_parameters(run: RunDir) -> int:
    """Parameters training changed (what model.safetensors holds: connectors, LoRA, fusion, ...)."""
    with safe_open(str(run.weights_file), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _step_seconds(run: RunDir) -> float:
    steps = read_records(run.metrics_file, {"seconds?": float}, "training metrics")
    return sum(step.get("seconds", 0.0) for step in steps)


def _latency(engine: Engine, samples, cfg: GenerationConfig) -> float:
    """Median seconds to answer one sample alone (batch 1, greedy), after one warm-up."""
    prompts = [Sample(s.id, s.prompt(), s.meta) for s in samples]
    engine.generate(prompts[:1], cfg)
    times = []
    for p in prompts:
        t0 = time.perf_counter()
        engine.generate([p], cfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
        runner = RUNNERS[type(recipe)]
        record = {
            "variant": variant.name,
            "seed": seed,
            **runner(recipe, run, resume, console, progress, parts_factory, sweep),
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


def _run_generative(
    recipe: Recipe, run: RunDir, resume: bool, console: Console, progress: bool, parts_factory, sweep: Sweep
) -> dict:
    """Train, evaluate (VQA exact match) and time one multimodal LLM run."""
    parts = parts_factory() if parts_factory else None
    trained = train(recipe, run.path, resume=resume, console=console, progress=progress, parts=parts)
    loaded = load_model(run, progress=progress, parts=parts_factory() if parts_factory else None)
    _, model, processor = loaded
    outcome = evaluate_run(run, blind=False, progress=progress, loaded=loaded)
    result: VQAResult = outcome.result
    timed = select_subset(load_data(recipe.data.eval), sweep.spec.eval.latency_samples, recipe.data.eval_seed)
    latency = _latency(Engine(model, processor), timed, generation_config(recipe, greedy=True))
    return {
        "accuracy": result.accuracy,
        "n_eval": result.n,
        "per_type": {t: v["accuracy"] for t, v in result.per_type.items()},
        "trainable_params": _saved_parameters(run),
        "image_tokens": {m: model.media_tokens_per_item(m) for m in recipe.model.encoders},
        "text_tokens_per_image": {m: model.tokens_per_item(m) for m in recipe.model.encoders},
        "wall_seconds_last_attempt": round(trained.seconds, 2),
        "eval_seconds": round(outcome.seconds, 2),
        "latency_s": round(latency, 4),
    }


def _run_classifier(
    recipe: ClassifierRecipe,
    run: RunDir,
    resume: bool,
    console: Console,
    progress: bool,
    parts_factory,
    sweep,
) -> dict:
    """Train and evaluate one fusion classifier on its cached features (no latency: a head answers in
    microseconds; the encoders' cost is the same for every fusion)."""
    from omnifuse.training.classifier import train_classifier

    trained = train_classifier(recipe, run.path, resume=resume, console=console, progress=progress)
    result = json.loads((run.path / "eval.json").read_text())
    record = {
        "accuracy": result["accuracy"],
        "n_eval": result["n"],
        "macro_f1": result["macro_f1"],
        "trainable_params": result["trainable_params"],
        "wall_seconds_last_attempt": round(trained.seconds, 2),
    }
    if "privacy" in result:
        record["epsilon"] = result["privacy"]["epsilon"]
        record["target_epsilon"] = result["privacy"]["target_epsilon"]
    rob = run.path / "robustness.json"
    if rob.is_file():
        record["missing"] = {m: v["dropped"] for m, v in json.loads(rob.read_text())["missing"].items()}
    return record


# recipe class → what one sweep run does
RUNNERS: dict[type, Callable[..., dict]] = {Recipe: _run_generative, ClassifierRecipe: _run_classifier}
