"""What ``omnifuse explain`` needs of a classifier run: the trained classifier and one sample's
normalised features, extracted by the recipe's frozen encoders from the files the user gives."""

from __future__ import annotations

from pathlib import Path

import torch

from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.models.features import extract_features
from omnifuse.rundir import RunDir
from omnifuse.runtime import resolve_placement
from omnifuse.tasks.classify.reload import load_classifier

OPTIONS = {"image": "--image", "audio": "--audio", "text": "the question argument"}


def explain_inputs(
    run: RunDir, question: str, image: Path | None, audio: Path | None, device: str | None = None,
    dtype: str | None = None,
) -> tuple:  # fmt: skip
    """``(model, {modality: [1, ...] normalised features}, classes)`` for one sample made of ``question``
    (the text modality), ``image`` and ``audio``; each modality the recipe encodes must be given."""
    recipe = run.require_trained().recipe()
    given = {"image": image, "audio": audio, "text": question.strip() or None}
    missing = [m for m in sorted(recipe.model.encoders) if given.get(m) is None]
    if missing:
        need = ", ".join(f"{m} ({OPTIONS.get(m, m)})" for m in missing)
        raise OmnifuseError(f"{run.path} is a classifier of {', '.join(sorted(recipe.model.encoders))}; "
                            f"give every modality it reads: missing {need}")  # fmt: skip
    parts = [ImagePart(path=image)] if image is not None else []
    parts += [AudioPart(path=audio)] if audio is not None else []
    sample = Sample("explain", (Message("user", (*parts, TextPart(question))),))
    placement = resolve_placement(recipe.runtime, device=device, dtype=dtype, inference=True)
    trained = load_classifier(run, placement)
    form = recipe.model.feature_form()
    features = {}
    for m, spec in sorted(recipe.model.encoders.items()):
        raw = extract_features([sample], m, spec, form=form, cache=False, progress=False, placement=placement)
        features[m] = trained.normalizers[m](raw).to(torch.float32)
    return trained.model, features, trained.classes
