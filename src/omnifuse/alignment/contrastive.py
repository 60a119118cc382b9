"""Contrastive dual encoders over frozen features: CLIP's InfoNCE and SigLIP's pairwise sigmoid loss.

Each modality's frozen feature goes through its own projection head into a shared space, where the
embeddings are L2-normalised and compared by dot product. The two losses differ in what they normalise:

* CLIP (Radford et al. 2021): the similarity matrix scaled by a learned ``exp(logit_scale)`` is read as
  logits of a classification of each image among the batch's texts and of each text among the images;
  the loss is the mean of the two cross-entropies. ``logit_scale`` starts at log(1/0.07) and is clamped
  to at most log(100), as in CLIP.
* SigLIP (Zhai et al. 2023): every (i, j) pair of the batch is an independent binary problem, "do they
  match?", with logit ``exp(t') · <x_i, y_j> + b``; ``t'`` starts at log 10 and ``b`` at −10 (the
  paper's initialisation, which keeps the many negatives from dominating the first steps). The loss is
  the summed negative log-sigmoid divided by the batch size.

Both accept a ``positives`` mask [B, B] for batches where several items share a meaning (easy-vqa's
captions repeat: two images both described as "a red circle" are not a negative pair). Without it,
the diagonal is the only positive, exactly as in the papers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError

CLIP_INIT_TEMPERATURE = 0.07
CLIP_MAX_LOGIT_SCALE = math.log(100.0)
SIGLIP_INIT_T = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0


def _positives(positives: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if positives is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    if positives.shape != (n, n):
        raise OmnifuseError(f"positives must be a [{n}, {n}] mask, got shape {tuple(positives.shape)}")
    if not positives.diagonal().all():
        raise OmnifuseError("positives must include the diagonal: each item matches its own pair")
    return positives.bool()


def clip_loss(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of a scaled similarity matrix ``logits [B, B]`` (rows: modality A, columns: B).

    With several positives per row, the target is uniform over them (soft cross-entropy); with the
    default (the diagonal) this is CLIP's loss exactly."""
    pos = _positives(positives, logits.shape[0], logits.device).float()
    a_to_b = -(F.log_softmax(logits, dim=1) * (pos / pos.sum(1, keepdim=True))).sum(1).mean()
    b_to_a = -(F.log_softmax(logits.t(), dim=1) * (pos.t() / pos.t().sum(1, keepdim=True))).sum(1).mean()
    return (a_to_b + b_to_a) / 2


def siglip_loss(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's loss of ``logits [B, B] = exp(t')·sim + b``: −Σ_ij log σ(z_ij · logit_ij) / B, with
    z_ij = +1 for matching pairs and −1 otherwise."""
    pos = _positives(positives, logits.shape[0], logits.device)
    labels = pos.float() * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


class ClipCriterion(nn.Module):
    """CLIP's learned temperature (as a log scale) and loss."""

    def __init__(self, init_temperature: float = CLIP_INIT_TEMPERATURE) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def logits(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.clamp(max=CLIP_MAX_LOGIT_SCALE).exp() * za @ zb.t()

    def forward(
        self, za: torch.Tensor, zb: torch.Tensor, positives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return clip_loss(self.logits(za, zb), positives)

    def extra_metrics(self) -> dict[str, float]:
        return {"temperature": math.exp(-min(self.logit_scale.item(), CLIP_MAX_LOGIT_SCALE))}


class SigLipCriterion(nn.Module):
    """SigLIP's learned temperature t' (log scale) and bias b, and its loss."""

    def __init__(self, init_t: float = SIGLIP_INIT_T, init_bias: float = SIGLIP_INIT_BIAS) -> None:
        super().__init__()
        self.t_prime = nn.Parameter(torch.tensor(float(init_t)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def logits(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return self.t_prime.exp() * za @ zb.t() + self.bias

    def forward(
        self, za: torch.Tensor, zb: torch.Tensor, positives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return siglip_loss(self.logits(za, zb), positives)

    def extra_metrics(self) -> dict[str, float]:
        return {"t": math.exp(self.t_prime.item()), "bias": self.bias.item()}


class DualEncoder(nn.Module):
    """Two projection heads into one space plus the contrastive criterion that owns the learned scale.

    ``forward(a, b, positives)`` returns the loss; ``embed_a`` / ``embed_b`` the normalised embeddings
    used for retrieval (cosine similarity)."""

    def __init__(
        self, head_a: nn.Module, head_b: nn.Module, criterion: ClipCriterion | SigLipCriterion
    ) -> None:
        super().__init__()
        self.head_a, self.head_b, self.criterion = head_a, head_b, criterion

    def embed_a(self, a: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_a(a), dim=-1)

    def embed_b(self, b: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_b(b), dim=-1)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.criterion(self.embed_a(a), self.embed_b(b), positives)
