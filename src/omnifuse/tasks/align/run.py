"""``omnifuse train`` and ``omnifuse eval`` for an alignment recipe (``task: align``): cached frozen
features of two modalities → the recipe's method → a run directory.

::

    RUN/recipe.yaml        the resolved recipe
    RUN/model.safetensors  the method's learned tensors (heads, CCA rotations, …) and the normalisation statistics
    RUN/metrics.jsonl      one line per epoch: training loss and a held-out measure
    RUN/eval.json          retrieval R@k in both directions with their chance levels, canonical correlations,
                           translation errors, or DeViSE's zero-shot accuracy
    RUN/predictions.jsonl  one line per query (direction, rank, R@1 hit), or per zero-shot sample
    RUN/report.md          the same as tables, with loss.png

``omnifuse eval RUN`` restores the method from model.safetensors and writes eval.json, predictions.jsonl
and report.md again with the same evaluation code as training's end (optionally on other eval data).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from omnifuse.atomic import atomic_write_text
from omnifuse.errors import OmnifuseError
from omnifuse.eval.importance import ImportanceSettings, importance_markdown
from omnifuse.models.features import Normalizer
from omnifuse.models.weights import read_tensors, save_tensors_atomic
from omnifuse.recipe import (
    AlignRecipe,
    CCAMethodSpec,
    ClipMethodSpec,
    CycleMethodSpec,
    DeepCCAMethodSpec,
    DeViSEMethodSpec,
    SigLipMethodSpec,
)
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement, resolve_placement
from omnifuse.tasks.align.evaluation import importance as retrieval_importance
from omnifuse.tasks.align.features import Gallery, Pairs, paired_features
from omnifuse.tasks.align.methods import (
    CCAMethod,
    Context,
    CycleMethod,
    DeepCCAMethod,
    DualEncoderMethod,
    Method,
)
from omnifuse.tasks.align.report import plot_history, report_text
from omnifuse.tasks.align.zero_shot import DeViSEMethod
from omnifuse.training.loop import prepare_run_dir, seed_everything
from omnifuse.untrusted import check_safetensors, read_json

PREDICTIONS = "predictions.jsonl"

# method spec class → the method (train, evaluate, weights, restore, predictions)
METHODS: dict[type, Method] = {
    ClipMethodSpec: DualEncoderMethod(),
    SigLipMethodSpec: DualEncoderMethod(),
    CCAMethodSpec: CCAMethod(),
    DeepCCAMethodSpec: DeepCCAMethod(),
    DeViSEMethodSpec: DeViSEMethod(),
    CycleMethodSpec: CycleMethod(),
}


@dataclass(frozen=True)
class AlignResult:
    evaluation: dict
    seconds: float
    run_dir: Path
    already_finished: bool = False  # --resume of a finished run: nothing was trained or written


def train_align(
    recipe: AlignRecipe, out: Path, *, progress: bool = True, resume: bool = False
) -> AlignResult:
    """Train an alignment recipe into the run directory ``out`` (a fresh one: alignment runs take
    seconds on cached features, so there is nothing to resume; --resume of a finished run is a no-op).
    The torch methods train on the recipe's ``runtime`` device and dtype (``--device`` / ``--dtype``)."""
    start = time.perf_counter()
    placement = resolve_placement(recipe.runtime)  # a device or dtype this machine lacks: refused first
    run = RunDir(Path(out))
    if resume and run.exists() and prepare_run_dir(run, recipe, resume=True):
        evaluation = read_json(run.path / "eval.json", "evaluation")
        return AlignResult(evaluation, 0.0, run.path, already_finished=True)
    if resume:
        raise OmnifuseError(
            "alignment runs train in seconds on cached features and cannot be resumed; drop --resume"
        )
    prepare_run_dir(run, recipe, resume=False)
    with run.training():
        evaluation = _fit(recipe, run, progress, placement)
    return AlignResult(evaluation, time.perf_counter() - start, run.path)


def _heldout(recipe: AlignRecipe) -> frozenset[str]:
    return frozenset(recipe.method.heldout if isinstance(recipe.method, DeViSEMethodSpec) else ())


def _context(recipe: AlignRecipe, train: Pairs, evl: Pairs, names: list[str], progress: bool,
             placement: Placement) -> Context:  # fmt: skip
    """The pairs and the eval gallery (its identical items found on the CPU) copied once to the device."""
    device = placement.device
    gallery = Gallery.of(evl).to(device)
    return Context(recipe, train.to(device), evl.to(device), gallery, names, progress, placement)


def _fit(recipe: AlignRecipe, run: RunDir, progress: bool, placement: Placement) -> dict:
    train, evl, norms, names = paired_features(recipe, progress, _heldout(recipe), placement=placement)
    # Seeded right before the method's own random numbers (initialisation, shuffling).
    seed_everything(recipe.seed)
    ctx = _context(recipe, train, evl, names, progress, placement)
    method = METHODS[type(recipe.method)]
    trained, history = method.train(ctx)
    weights = dict(method.weights(trained))
    for m, norm in norms.items():
        weights.update(norm.tensors(f"normalize.{m}"))
    meta = {"method": recipe.method.type}
    if not method.converged(trained):  # what `omnifuse eval` reports again
        meta["cca_converged"] = "false"
    save_tensors_atomic(weights, run.weights_file, meta)
    atomic_write_text(run.metrics_file, "".join(json.dumps(h) + "\n" for h in history))
    has_plot = bool(history)
    if has_plot:
        plot_history(history, run.path / "loss.png")
    return _write_evaluation(run, ctx, method, trained, has_plot)


def _write_evaluation(
    run: RunDir,
    ctx: Context,
    method: Method,
    trained,
    has_plot: bool,
    importance: ImportanceSettings | None = None,
) -> dict:
    """eval.json, predictions.jsonl and report.md of ``trained`` on ``ctx``'s eval pairs (with ``importance``:
    each side's importance for retrieval too)."""
    evl = ctx.eval
    evaluation = {
        "method": ctx.recipe.method.type,
        "modalities": ctx.names,
        "n_train_pairs": len(ctx.train.keys),
        "n_eval_pairs": len(evl.keys),
        "n_eval_keys": len(set(evl.keys)),
    }
    with ctx.autocast():  # forward passes only: evaluation has no backward
        evaluation |= method.evaluate(ctx, trained)
        predictions = method.predictions(ctx, trained)
        if importance is not None:
            evaluation["importance"] = retrieval_importance(
                method.similarity(trained), ctx.gallery, ctx.names, importance
            )
    atomic_write_text(run.path / "eval.json", json.dumps(evaluation, indent=2))
    atomic_write_text(run.path / PREDICTIONS, "".join(json.dumps(p) + "\n" for p in predictions))
    report = [
        report_text(ctx.recipe, evaluation, has_plot),
        *importance_markdown(evaluation.get("importance")),
    ]
    atomic_write_text(run.path / "report.md", "\n".join(report))
    return evaluation


def evaluate_align_run(
    run: RunDir,
    data: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    importance: ImportanceSettings | None = None,
) -> dict:
    """Restore a trained alignment run and evaluate it on the recipe's eval data (or ``data``, a seeded
    subset of ``limit`` pairs); rewrites eval.json, predictions.jsonl and report.md. On the recipe's
    ``runtime`` placement, or ``device`` / ``dtype`` (``--device`` / ``--dtype``). ``importance``
    (``--importance``): each side's importance for retrieval too (not for DeViSE, which is scored zero-shot)."""
    run.require_trained()
    recipe: AlignRecipe = run.recipe()
    if importance is not None and isinstance(recipe.method, DeViSEMethodSpec):
        raise OmnifuseError(
            f"--importance measures retrieval (R@1 with one side permuted or noised); {run.path} is a DeViSE run, "
            "scored by zero-shot classification: evaluate it without --importance"
        )
    placement = resolve_placement(recipe.runtime, device=device, dtype=dtype, inference=True)
    if data is not None or limit is not None:
        d = recipe.data
        chosen = limit if limit is not None else (d.eval_limit if data is None else None)
        recipe = recipe.model_copy(
            update={"data": d.model_copy(update={"eval": data or d.eval, "eval_limit": chosen})}
        )
    tensors = read_tensors(run.weights_file)
    metadata = check_safetensors(run.weights_file).get("__metadata__")
    metadata = metadata if isinstance(metadata, dict) else {}
    names = list(recipe.model.encoders)
    norms = {
        m: Normalizer.from_tensors(recipe.model.normalization(m), tensors, f"normalize.{m}") for m in names
    }
    train, evl, _, names = paired_features(recipe, progress, _heldout(recipe), norms, placement)
    ctx = _context(recipe, train, evl, names, progress, placement)
    method = METHODS[type(recipe.method)]
    trained = method.restore(ctx, tensors, metadata.get("cca_converged") != "false")
    return _write_evaluation(run, ctx, method, trained, (run.path / "loss.png").is_file(), importance)
