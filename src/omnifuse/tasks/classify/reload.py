"""``omnifuse eval`` of a classifier run: the trained head rebuilt from the run directory (run.json's
classes and feature shapes, model.safetensors, normalization.safetensors), the eval features extracted
(or read from the feature cache), and the scores of training's final evaluation computed again."""

from __future__ import annotations

from dataclasses import dataclass

from omnifuse.data.sample import select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.importance import ImportanceSettings
from omnifuse.models.classifier import FusionClassifier, build_classifier
from omnifuse.models.features import Normalizer
from omnifuse.models.weights import load_weights
from omnifuse.recipe import ClassifierRecipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement, place_model, resolve_placement
from omnifuse.tasks.classify.evaluation import evaluate_classifier
from omnifuse.tasks.classify.features import load_normalizers, make_split, raw_features
from omnifuse.tasks.classify.trainer import check_private_compatible
from omnifuse.untrusted import json_fields, read_json


@dataclass(frozen=True)
class TrainedClassifier:
    recipe: ClassifierRecipe
    model: FusionClassifier
    normalizers: dict[str, Normalizer]
    classes: list[str]
    epsilon: float | None  # spent by DP-SGD training (None without privacy)


def load_classifier(run: RunDir, placement: Placement | None = None) -> TrainedClassifier:
    """The trained classifier of a finished run, in eval mode, on ``placement`` (default: the CPU in
    float32; with a low-precision dtype every parameter is stored in it, as for any inference)."""
    run.require_trained()
    recipe = run.recipe()
    where = f"{run.meta_file} (the run's metadata)"
    meta = json_fields(
        read_json(run.meta_file, "run metadata"), where, {"classes": list, "feature_shapes": dict}
    )
    classes = [str(c) for c in meta["classes"]]
    shapes = {m: tuple(int(d) for d in s) for m, s in meta["feature_shapes"].items()}
    if set(shapes) != set(recipe.model.encoders):
        raise OmnifuseError(f"{where}: feature shapes for {sorted(shapes)}, but the recipe encodes "
                            f"{sorted(recipe.model.encoders)}; the run directory is damaged")  # fmt: skip
    model = build_classifier(recipe.model, shapes, len(classes))
    if recipe.privacy is not None:  # the same layer substitutions as in training
        model = check_private_compatible(model, recipe.model.fusion.type)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    load_weights(model, run.weights_file, expected=trained)
    place_model(model, placement or resolve_placement(device="cpu", dtype="float32"))
    model.eval()
    epsilon = meta.get("epsilon")
    return TrainedClassifier(
        recipe, model, load_normalizers(run, recipe), classes, float(epsilon) if epsilon is not None else None
    )


def evaluate_classifier_run(
    run: RunDir,
    data: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    importance: ImportanceSettings | None = None,
) -> dict:
    """Evaluate a trained classifier run on the recipe's eval data (or ``data``, a seeded subset of
    ``limit`` samples) and rewrite eval.json, predictions.jsonl, robustness.json and the report (with
    ``importance``: each modality's importance in them too). It runs
    on the recipe's ``runtime`` placement, or ``device`` / ``dtype`` (``--device`` / ``--dtype``)."""
    run.require_trained()
    placement = resolve_placement(run.recipe().runtime, device=device, dtype=dtype, inference=True)
    trained = load_classifier(run, placement)
    recipe = trained.recipe
    if data is not None or limit is not None:
        d = recipe.data
        ref = data or d.eval
        chosen = limit if limit is not None else (d.eval_limit if data is None else None)
        recipe = recipe.model_copy(update={"data": d.model_copy(update={"eval": ref, "eval_limit": chosen})})
    d = recipe.data
    samples = select_subset(load_data(d.eval), d.eval_limit, d.eval_seed)
    if not samples:
        raise OmnifuseError(f"{d.eval} holds no samples to evaluate")
    split = make_split(
        samples,
        raw_features(recipe, samples, progress, placement),
        trained.normalizers,
        trained.classes,
        "eval",
    )
    return evaluate_classifier(
        run, recipe, trained.model, split, trained.classes, trained.epsilon, progress, placement, importance
    )
