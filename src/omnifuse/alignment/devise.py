"""DeViSE (Frome et al. 2013): image features mapped into a text-embedding space of class names.

A linear map (or small MLP) M takes an image's frozen feature v into the space of the class names'
text embeddings t_c (unit length). Training uses the hinge rank loss of the paper,

    loss(v, y) = Σ_{j ≠ y} max(0, margin − t_y·Mv + t_j·Mv),     margin 0.1,

summed over the *training* classes. Because classes are points in a text space, a class never seen in
training can still be predicted: the nearest class-name embedding to Mv, among all classes or among the
held-out ones only (zero-shot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from omnifuse.errors import OmnifuseError

DEVISE_MARGIN = 0.1


def hinge_rank_loss(
    scores: torch.Tensor, labels: torch.Tensor, margin: float = DEVISE_MARGIN
) -> torch.Tensor:
    """``scores [B, C]`` = t_c·Mv over the C training classes, ``labels [B]`` in 0..C−1: the mean over
    the batch of Σ_{j≠y} max(0, margin − s_y + s_j)."""
    true = scores.gather(1, labels[:, None])
    hinge = (margin - true + scores).clamp(min=0)
    hinge = hinge.masked_fill(nn.functional.one_hot(labels, scores.shape[1]).bool(), 0.0)
    return hinge.sum(dim=1).mean()


class DeViSE(nn.Module):
    """The map M and the (fixed, unit-normalised) training class embeddings it is trained against.

    ``forward(features, labels)`` is the hinge rank loss; ``scores(features, class_embeddings)`` ranks
    any set of class embeddings, seen or not."""

    def __init__(self, mapping: nn.Module, train_class_embeddings: torch.Tensor) -> None:
        super().__init__()
        self.mapping = mapping
        self.register_buffer("train_classes", nn.functional.normalize(train_class_embeddings, dim=-1))

    def scores(self, features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        return self.mapping(features) @ nn.functional.normalize(class_embeddings, dim=-1).t()

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, margin: float = DEVISE_MARGIN
    ) -> torch.Tensor:
        return hinge_rank_loss(self.scores(features, self.train_classes), labels, margin)


@dataclass(frozen=True)
class ZeroShotResult:
    accuracy_all: float  # nearest among all classes (seen and held out)
    accuracy_heldout: float  # nearest among the held-out classes only
    chance_all: float
    chance_heldout: float
    n: int

    def summary(self) -> dict:
        return {
            "zero_shot_accuracy_all": self.accuracy_all,
            "zero_shot_accuracy_heldout_only": self.accuracy_heldout,
            "chance_all": self.chance_all,
            "chance_heldout_only": self.chance_heldout,
            "n": self.n,
        }


@torch.no_grad()
def zero_shot(
    model: DeViSE,
    features: torch.Tensor,
    labels: Sequence[int],
    class_embeddings: torch.Tensor,
    heldout: Sequence[int],
) -> ZeroShotResult:
    """Accuracy on samples of held-out classes (``labels`` index ``class_embeddings``, all of them in
    ``heldout``), predicting the nearest class name among all classes and among the held-out ones."""
    heldout = list(heldout)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long, device=features.device)
    if not heldout or labels_t.numel() == 0:
        raise OmnifuseError("zero-shot evaluation needs held-out classes and samples of them")
    if not set(labels_t.tolist()) <= set(heldout):
        raise OmnifuseError("zero-shot evaluation got samples of classes that are not held out")
    scores = model.scores(features, class_embeddings)
    pred_all = scores.argmax(dim=1)
    pred_held = torch.as_tensor(heldout, device=scores.device)[scores[:, heldout].argmax(dim=1)]
    return ZeroShotResult(
        accuracy_all=(pred_all == labels_t).float().mean().item(),
        accuracy_heldout=(pred_held == labels_t).float().mean().item(),
        chance_all=1.0 / class_embeddings.shape[0],
        chance_heldout=1.0 / len(heldout),
        n=labels_t.numel(),
    )
