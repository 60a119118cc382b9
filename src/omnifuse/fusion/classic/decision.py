"""Decision-level (late) fusion: every modality has its own classifier (a "voter" that sees only that
modality); the heads here combine the voters' logits ``[B, C]`` into one prediction.

They return log-probabilities (averages) or logits (stacking); both are scores whose argmax is the
prediction and whose cross-entropy trains the combination. The classifier also trains every voter on its
own (``FusionClassifier.loss``), so a vote stays meaningful alone and dropping a modality's vote leaves a
working classifier. A missing modality's vote is left out (``present``): averages renormalise over the
votes that are there; stacking sees a zero vote.
"""

from __future__ import annotations

import torch
from torch import nn

from omnifuse.fusion.classic.feature import LearnedOffset, masked_softmax

_EPS = 1e-8


def _average(votes: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    probs = torch.stack([torch.softmax(v, dim=-1) for v in votes], dim=1)  # [B, M, C]
    return torch.log((weights.unsqueeze(-1) * probs).sum(1) + _EPS)


class LateAverage(nn.Module):
    """Mean of the present voters' class probabilities (log of it)."""

    decision = True

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.out_dim = num_classes

    def forward(self, votes: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return _average(votes, present / present.sum(1, keepdim=True).clamp(min=1))


class LateWeighted(nn.Module):
    """A learned weight per modality (softmax over the present ones) for the average of probabilities."""

    decision = True

    def __init__(self, num_modalities: int, num_classes: int) -> None:
        super().__init__()
        self.weight_logits = LearnedOffset(num_modalities)
        self.out_dim = num_classes

    def forward(self, votes: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return _average(votes, masked_softmax(self.weight_logits(torch.zeros_like(present)), present, dim=1))


class LateStacking(nn.Module):
    """Stacking: a linear meta-classifier over all voters' logits. It reads the votes detached, so the
    voters remain unimodal classifiers trained by their own loss and only the meta-classifier learns how
    to combine them."""

    decision = True

    def __init__(self, num_modalities: int, num_classes: int) -> None:
        super().__init__()
        self.meta = nn.Linear(num_modalities * num_classes, num_classes)
        self.out_dim = num_classes

    def forward(self, votes: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([v.detach() * present[:, m : m + 1] for m, v in enumerate(votes)], dim=-1)
        return self.meta(stacked)
