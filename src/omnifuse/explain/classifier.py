"""Kernel SHAP, LIME and occlusion for a fusion classifier (``task: classify``): the log-probability of the
explained class attributed to each modality's input features, and summed per modality.

The classifier reads each modality's frozen-encoder features, normalised with the training statistics
(``[D]`` pooled or ``[P, D]`` tokens). Its features are grouped: a token-form modality gives one feature
per token (for a CNN or ViT image encoder, one image region), a pooled vector is cut into ``groups``
contiguous blocks of dimensions (single dimensions of a pooled embedding mean nothing to a reader, and
Kernel SHAP needs more samples than features). A group is *absent* when its values are 0, which with
``standardize`` normalisation is the training mean: "this modality's evidence is average". The same
Captum explainers as for the language models (:mod:`omnifuse.explain.perturbation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError
from omnifuse.explain.perturbation import PERTURBATION_METHODS, PerturbationSettings, captum_attribute
from omnifuse.models.classifier import FusionClassifier
from omnifuse.runtime import placement_of

DEFAULT_GROUPS = 16  # blocks per pooled feature vector


def refuse_map_methods(methods) -> None:
    """Attention and gradient maps are drawn over an LLM's image: a classifier has neither."""
    other = [m for m in methods if m not in PERTURBATION_METHODS]
    if other:
        raise OmnifuseError(
            f"--method {','.join(other)} does not apply to a classifier run: attention and gradient maps are "
            "read from a language model's attention and the pixels it receives, while a fusion classifier "
            f"reads cached encoder features. Use --method {','.join(PERTURBATION_METHODS)} (attributions to each "
            "modality's features, summed per modality)"
        )


def feature_groups(shape: tuple[int, ...], groups: int, offset: int) -> torch.Tensor:
    """Group ids (from ``offset``) for one sample's features of ``shape``: one per token for ``[P, D]``,
    ``groups`` contiguous blocks for ``[D]``."""
    if len(shape) == 2:
        return (torch.arange(shape[0])[:, None].expand(shape) + offset).contiguous()
    if len(shape) != 1:
        raise OmnifuseError(f"cannot group classifier features of shape {shape} (expected [D] or [P, D])")
    k = max(1, min(groups, shape[0]))
    return torch.arange(shape[0]) * k // shape[0] + offset


@dataclass
class ModalityAttribution:
    modality: str
    unit: str  # token | block
    values: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.values))


@dataclass
class ClassifierAttribution:
    method: str
    samples: int | None
    seed: int | None
    target: str
    log_prob: float
    baseline_log_prob: float  # every feature at 0 (the training mean under standardize)
    modalities: list[ModalityAttribution]
    evaluations: int
    seconds: float
    class_probs: dict[str, float] = field(default_factory=dict)

    def abs_shares(self) -> dict[str, float]:
        sums = {m.modality: float(np.abs(m.values).sum()) for m in self.modalities}
        total = sum(sums.values())
        return {m: (v / total if total > 0 else 0.0) for m, v in sums.items()}

    def to_json(self) -> dict:
        shares = self.abs_shares()
        return {
            "method": self.method, "samples": self.samples, "seed": self.seed, "class": self.target,
            "log_prob": self.log_prob, "baseline_log_prob": self.baseline_log_prob,
            "model_evaluations": self.evaluations, "seconds": round(self.seconds, 2),
            "modalities": {
                m.modality: {"unit": m.unit, "values": m.values, "total": m.total, "abs_share": shares[m.modality]}
                for m in self.modalities
            },
            "efficiency_gap": sum(m.total for m in self.modalities) - (self.log_prob - self.baseline_log_prob),
        }  # fmt: skip


def explain_classifier(
    model: FusionClassifier, features: dict[str, torch.Tensor], classes: list[str], method: str,
    settings: PerturbationSettings, target: str | None = None, groups: int = DEFAULT_GROUPS,
    on_eval: Callable[[int], None] | None = None,
) -> ClassifierAttribution:  # fmt: skip
    """``method`` attributions of log p(class) for one sample (``features[m]``: ``[1, ...]``, normalised);
    the class is the predicted one unless ``target`` names another."""
    if method not in PERTURBATION_METHODS:
        refuse_map_methods([method])
    placement = placement_of(model)
    mods = list(model.modalities)
    x = tuple(features[m].to(placement.device, torch.float32) for m in mods)
    masks, offset = [], 0
    for t in x:
        masks.append(feature_groups(tuple(t.shape[1:]), groups, offset).to(t.device)[None])
        offset = int(masks[-1].max()) + 1
    if method == "shap" and settings.samples < offset + 2:
        raise OmnifuseError(
            f"--samples {settings.samples}: Kernel SHAP fits one value per feature group ({offset} here) and "
            f"needs more samples than groups; give --samples {offset + 2} or more"
        )
    evaluations = [0]

    @torch.no_grad()
    def log_probs(*inputs: torch.Tensor) -> torch.Tensor:
        with placement.autocast():
            logits = model(dict(zip(mods, inputs, strict=True))).float()
        evaluations[0] += logits.shape[0]
        if on_eval is not None:
            on_eval(logits.shape[0])
        return F.log_softmax(logits, dim=-1)

    full = log_probs(*x)[0]
    index = int(full.argmax()) if target is None else _class_index(target, classes)
    f = lambda *inputs: log_probs(*inputs)[:, index]  # noqa: E731
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        base = tuple(torch.zeros_like(t) for t in x)
        values = captum_attribute(method, f, x, base, tuple(masks), settings.samples, settings.batch).numpy()
        base_lp = float(f(*base)[0])
    out, start_id = [], 0
    for m, mask, t in zip(mods, masks, x, strict=True):
        count = int(mask.max()) + 1 - start_id
        out.append(
            ModalityAttribution(
                m, "token" if t.dim() == 3 else "block", values[start_id : start_id + count].tolist()
            )
        )
        start_id += count
    perturbation = method != "occlusion"
    return ClassifierAttribution(
        method, settings.samples if perturbation else None, settings.seed if perturbation else None,
        classes[index], float(full[index]), base_lp, out, evaluations[0], time.perf_counter() - start,
        {c: float(p) for c, p in zip(classes, full.exp().tolist(), strict=True)},
    )  # fmt: skip


def _class_index(name: str, classes: list[str]) -> int:
    if name.strip() not in classes:
        shown = ", ".join(repr(c) for c in classes[:20])
        raise OmnifuseError(f"--answer {name!r} is not one of the classifier's classes ({shown})")
    return classes.index(name.strip())
