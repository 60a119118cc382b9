"""FusionClassifier: per-modality projections → a classic fusion head → a classification head.

Composition by constructor injection (as in TorchMultimodal's late fusion): the modules come in built; the
builder (:func:`build_classifier`) turns a :class:`ClassifierModelSpec` into flat constructor arguments,
dispatching on the fusion spec's class. The inputs are cached frozen-encoder features, so the classifier
is the whole trainable model.

- feature level: ``projections[m]`` maps modality m's features to width ``dim``; ``fusion`` combines them;
  ``head`` is an MLP to the classes;
- decision level: ``projections[m]`` is modality m's own classifier (its "voter", features → class logits);
  ``fusion`` combines the votes; ``head`` is the identity;
- data level: projections are identities (the raw maps go in), the fusion is a CNN over the stacked maps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.components import ClassicFusion
from omnifuse.errors import OmnifuseError
from omnifuse.fusion.classic import (
    AttentionFusion,
    ConcatFusion,
    DataFusion,
    GatedFusion,
    LateAverage,
    LateStacking,
    LateWeighted,
    LowRankTensorFusion,
    TensorFusion,
    TransformerFusion,
)
from omnifuse.recipe import (
    AttentionFusionSpec,
    ClassifierModelSpec,
    ConcatFusionSpec,
    DataFusionSpec,
    GatedFusionSpec,
    LateAverageSpec,
    LateStackingSpec,
    LateWeightedSpec,
    LowRankTensorFusionSpec,
    TensorFusionSpec,
    TransformerFusionSpec,
)


class FusionClassifier(nn.Module):
    """``head(fusion([projections[m](x_m) for m in modalities], present))`` → class logits."""

    def __init__(self, projections: dict[str, nn.Module], fusion: ClassicFusion, head: nn.Module) -> None:
        super().__init__()
        self.modalities = sorted(projections)
        self.projections = nn.ModuleDict(projections)
        self.fusion, self.head = fusion, head
        self.decision = fusion.decision

    def _present(self, features: dict[str, torch.Tensor], present: torch.Tensor | None) -> torch.Tensor:
        if present is None:
            b = features[self.modalities[0]].shape[0]
            return features[self.modalities[0]].new_ones(b, len(self.modalities))
        return present.to(features[self.modalities[0]].dtype)

    def forward_parts(
        self, features: dict[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, per-modality projections — the votes, for decision-level fusion)."""
        present = self._present(features, present)
        h = [self.projections[m](features[m]) for m in self.modalities]
        return self.head(self.fusion(h, present)), h

    def forward(self, features: dict[str, torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_parts(features, present)[0]

    def loss(
        self,
        features: dict[str, torch.Tensor],
        labels: torch.Tensor,
        present: torch.Tensor | None = None,
        holdout: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits), the loss a mean of per-sample losses (as DP-SGD needs).

        Feature level: cross-entropy of the prediction. Decision level: each sample's loss is the mean
        cross-entropy of its present modalities' voters plus that of the combined prediction; with
        ``holdout`` (``[B]`` bool), the held-out samples train only the combiner, on detached votes, and
        the others only the voters — stacking's rule that the combiner learns from predictions the voters
        were not trained on (voters fit their training samples almost perfectly, so weights learned there
        say little about new data)."""
        p = self._present(features, present)
        h = [self.projections[m](features[m]) for m in self.modalities]
        if not self.decision:
            logits = self.head(self.fusion(h, p))
            return F.cross_entropy(logits, labels), logits
        logits = self.head(self.fusion([v.detach() for v in h] if holdout is not None else h, p))
        fused = F.cross_entropy(logits, labels, reduction="none")
        voters = torch.stack([F.cross_entropy(v, labels, reduction="none") for v in h], dim=1)  # [B, M]
        voters = (voters * p).sum(1) / p.sum(1).clamp(min=1)
        per_sample = fused + voters if holdout is None else torch.where(holdout, fused, voters)
        return per_sample.mean(), logits

    def has_combiner(self) -> bool:
        """Decision-level fusion with trainable combination weights (learned weights, stacking)."""
        return self.decision and any(p.requires_grad for p in self.fusion.parameters())


# ------------------------------------------------------------------ builder
def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Module:
    if hidden == 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


def _projection(shape: tuple[int, ...], dim: int, dropout: float) -> nn.Module:
    if len(shape) == 2:  # tokens: one linear map per token, no activation before attention
        return nn.Linear(shape[-1], dim)
    return nn.Sequential(nn.Linear(shape[-1], dim), nn.ReLU(), nn.Dropout(dropout))


# fusion spec class → (spec, shapes per modality in order, model spec, classes) → (fusion, projections)
Built = tuple[nn.Module, list[nn.Module]]


def _feature(make: Callable[[object, list[tuple[int, ...]]], nn.Module]) -> Callable[..., Built]:
    def build(spec, shapes, model: ClassifierModelSpec, num_classes: int) -> Built:
        return make(spec, shapes), [_projection(s, spec.dim, model.dropout) for s in shapes]

    return build


def _decision(make: Callable[[object, int, int], nn.Module]) -> Callable[..., Built]:
    def build(spec, shapes, model: ClassifierModelSpec, num_classes: int) -> Built:
        voters = [_mlp(s[-1], spec.dim, num_classes, model.dropout) for s in shapes]
        return make(spec, len(shapes), num_classes), voters

    return build


def _data(spec: DataFusionSpec, shapes, model: ClassifierModelSpec, num_classes: int) -> Built:
    if any(len(s) != 2 for s in shapes) or len(set(shapes)) != 1:
        raise OmnifuseError(
            f"data-level fusion stacks 2-D input maps of one shape as channels, got shapes {shapes}; give "
            "every modality a map of the same size, e.g. image: {type: pixels, size: 32} with audio: "
            "{type: logmel, n_mels: 32, tokens: 32}"
        )
    return DataFusion(len(shapes), spec.channels), [nn.Identity() for _ in shapes]


FUSION_BUILDERS: dict[type, Callable[..., Built]] = {
    ConcatFusionSpec: _feature(lambda s, shapes: ConcatFusion(len(shapes), s.dim)),
    AttentionFusionSpec: _feature(lambda s, shapes: AttentionFusion(s.dim)),
    GatedFusionSpec: _feature(lambda s, shapes: GatedFusion(len(shapes), s.dim)),
    TensorFusionSpec: _feature(lambda s, shapes: TensorFusion(len(shapes), s.dim)),
    LowRankTensorFusionSpec: _feature(
        lambda s, shapes: LowRankTensorFusion(len(shapes), s.dim, s.rank, s.out)
    ),
    TransformerFusionSpec: _feature(
        lambda s, shapes: TransformerFusion([sh[0] for sh in shapes], s.dim, s.layers, s.heads, s.ffn_mult)
    ),
    DataFusionSpec: _data,
    LateAverageSpec: _decision(lambda s, m, c: LateAverage(c)),
    LateWeightedSpec: _decision(lambda s, m, c: LateWeighted(m, c)),
    LateStackingSpec: _decision(lambda s, m, c: LateStacking(m, c)),
}


def build_classifier(
    spec: ClassifierModelSpec, shapes: dict[str, tuple[int, ...]], num_classes: int
) -> FusionClassifier:
    """The classifier for features of per-sample ``shapes`` (``(D,)`` pooled or ``(P, D)`` tokens)."""
    if num_classes < 2:
        raise OmnifuseError(
            f"a classifier needs at least 2 classes in the training data, found {num_classes}"
        )
    modalities = sorted(spec.encoders)
    ordered = [tuple(shapes[m]) for m in modalities]
    fusion, projections = FUSION_BUILDERS[type(spec.fusion)](spec.fusion, ordered, spec, num_classes)
    head = nn.Identity() if fusion.decision else _mlp(fusion.out_dim, spec.hidden, num_classes, spec.dropout)
    return FusionClassifier(dict(zip(modalities, projections, strict=True)), fusion, head)
