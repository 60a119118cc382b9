"""The features a fusion classifier trains and is evaluated on: samples of each split, their classes, the
frozen encoders' (cached) features normalised with train-split statistics, and the classifier's logits.

Shared by training (:mod:`omnifuse.tasks.classify.trainer`) and evaluation
(:mod:`omnifuse.tasks.classify.evaluation`), which import this module and not each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.models.classifier import FusionClassifier
from omnifuse.models.features import Normalizer, extract_features
from omnifuse.models.weights import save_tensors_atomic
from omnifuse.recipe import ClassifierRecipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement, placement_of

NORMALIZATION = "normalization.safetensors"


@dataclass
class FeatureSplit:
    """Normalised features of one split: ``features[m]`` is ``[N, ...]``; ``labels`` are class indices;
    ``holdout`` marks the training samples kept for a decision-level combiner. Held on the CPU (the
    feature cache's side); batches and chunks are copied to the model's device as they are used."""

    samples: list[Sample]
    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    holdout: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)


# ------------------------------------------------------------------ features and labels
def split_samples(recipe: ClassifierRecipe) -> tuple[list[Sample], list[Sample]]:
    d = recipe.data
    train = select_subset(load_data(d.train), d.train_limit, recipe.seed)
    evaluation = select_subset(load_data(d.eval), d.eval_limit, d.eval_seed)
    return train, evaluation


def class_names(samples: list[Sample]) -> list[str]:
    """The classes: the sorted set of training answers (stored in run.json)."""
    return sorted({s.answer().strip() for s in samples})


def label_indices(samples: list[Sample], classes: list[str], what: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({s.answer().strip() for s in samples} - set(index))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise OmnifuseError(
            f"the {what} data has answers that no training sample has ({shown}{' …' if len(unknown) > 5 else ''}); "
            "a classifier predicts only the training answers. Use eval data whose answers occur in training."
        )
    return torch.tensor([index[s.answer().strip()] for s in samples], device="cpu")


def raw_features(
    recipe: ClassifierRecipe, samples: list[Sample], progress: bool, placement: Placement | None = None
) -> dict[str, torch.Tensor]:
    """Each modality's frozen-encoder features (CPU float32; the encoders' networks run on ``placement``)."""
    form = recipe.model.feature_form()
    return {
        m: extract_features(samples, m, spec, form=form, progress=progress, placement=placement)
        for m, spec in sorted(recipe.model.encoders.items())
    }


def fit_normalizers(recipe: ClassifierRecipe, train: dict[str, torch.Tensor]) -> dict[str, Normalizer]:
    return {m: Normalizer.fit(recipe.model.normalization(m), x) for m, x in train.items()}


def save_normalizers(path: Path, normalizers: dict[str, Normalizer]) -> None:
    tensors = {k: v for m, n in normalizers.items() for k, v in n.tensors(m).items()}
    save_tensors_atomic(tensors, path, {"modes": json.dumps({m: n.mode for m, n in normalizers.items()})})


def load_normalizers(run: RunDir, recipe: ClassifierRecipe) -> dict[str, Normalizer]:
    tensors = load_file(str(run.path / NORMALIZATION))
    return {
        m: Normalizer.from_tensors(recipe.model.normalization(m), tensors, m) for m in recipe.model.encoders
    }


def make_split(
    samples: list[Sample],
    raw: dict[str, torch.Tensor],
    norms: dict[str, Normalizer],
    classes: list[str],
    what: str,
) -> FeatureSplit:
    return FeatureSplit(
        samples, {m: norms[m](x) for m, x in raw.items()}, label_indices(samples, classes, what)
    )


@torch.no_grad()
def predict(
    model: FusionClassifier,
    features: dict[str, torch.Tensor],
    present: torch.Tensor | None = None,
    batch: int = 1024,
    placement: Placement | None = None,
) -> torch.Tensor:
    """Class logits ``[N, C]`` (float32, on the model's device) in eval mode (training mode is restored):
    each chunk copied to ``placement``'s device (default: where the model is) and run under its autocast."""
    placement = placement or placement_of(model)
    was = model.training
    model.eval()
    n = next(iter(features.values())).shape[0]
    out = []
    for s in range(0, n, batch):
        chunk = {m: x[s : s + batch].to(placement.device) for m, x in features.items()}
        mask = None if present is None else present[s : s + batch].to(placement.device)
        with placement.autocast():
            out.append(model(chunk, mask).float())
    model.train(was)
    return torch.cat(out)


def accuracy(
    model: FusionClassifier,
    split: FeatureSplit,
    present: torch.Tensor | None = None,
    placement: Placement | None = None,
) -> float:
    guess = predict(model, split.features, present, placement=placement).argmax(-1)
    return (guess == split.labels.to(guess.device)).double().mean().item()
