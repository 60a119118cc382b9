"""Feature-level fusion heads: the modalities' projected features are combined into one vector.

Every head takes ``h`` (one tensor per modality, in a fixed modality order: ``[B, d]`` pooled vectors or
``[B, P, d]`` token sequences) and ``present`` (``[B, M]``, 1 where the modality is there, 0 where it is
missing), and returns ``[B, out_dim]``. A missing modality's features are zero; heads that can also leave it
out explicitly do so (attention and gates renormalise over the present modalities, the transformer masks
its tokens). Parameters live only in layers Opacus computes per-sample gradients for (Linear, LayerNorm,
MultiheadAttention after ``ModuleValidator.fix``) or in :class:`LearnedOffset`, so every head can be
trained with DP-SGD.
"""

from __future__ import annotations

import torch
from torch import nn


class LearnedOffset(nn.Module):
    """``x + w`` with a learned ``w`` (position / modality embeddings, the [CLS] token, modality weights).

    Written as its own leaf module with one tensor in and one out, so Opacus computes its per-sample
    gradients (through functorch) like any other layer's."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(*shape) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` where ``mask`` is 1; all-masked rows give zeros instead of NaN."""
    scores = scores.masked_fill(mask <= 0, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)


def _zero_missing(h: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
    shape = lambda x: (-1,) + (1,) * (x.dim() - 1)  # noqa: E731 - broadcast [B] over the feature axes
    return [x * present[:, m].reshape(shape(x)) for m, x in enumerate(h)]


class ConcatFusion(nn.Module):
    """The projected vectors side by side: ``[h_1; …; h_M]``."""

    decision = False  # feature level: the head turns the fused vector into logits

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.out_dim = num_modalities * dim

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return torch.cat(_zero_missing(h, present), dim=-1)


class AttentionFusion(nn.Module):
    """Attention-weighted sum: a score ``v·tanh(W x)`` per modality vector (or per token of every modality),
    softmax over the present ones, ``Σ α x``. With token features this is attention pooling over all tokens."""

    decision = False  # feature level: the head turns the fused vector into logits

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.out_dim = dim

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        seqs = [x.unsqueeze(1) if x.dim() == 2 else x for x in h]  # [B, P_m, d]
        x = torch.cat(seqs, dim=1)
        mask = torch.cat([present[:, m : m + 1].expand(-1, s.shape[1]) for m, s in enumerate(seqs)], dim=1)
        alpha = masked_softmax(self.score(x).squeeze(-1), mask, dim=1)  # [B, T]
        return (alpha.unsqueeze(-1) * x).sum(1)


class GatedFusion(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017): ``h'_m = tanh(W_m h_m)``, gates ``z = softmax_m(W_z [h])``
    per dimension, ``Σ z_m ⊙ h'_m``. With two modalities the softmax is GMU's sigmoid gate z, 1 − z."""

    decision = False  # feature level: the head turns the fused vector into logits

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_modalities))
        self.gate = nn.Linear(num_modalities * dim, num_modalities * dim)
        self.num_modalities, self.out_dim = num_modalities, dim

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        h = _zero_missing(h, present)
        cand = torch.stack([torch.tanh(t(x)) for t, x in zip(self.transforms, h, strict=True)], dim=1)
        z = self.gate(torch.cat(h, dim=-1)).reshape(-1, self.num_modalities, self.out_dim)
        z = masked_softmax(z, present.unsqueeze(-1).expand_as(z), dim=1)
        return (z * cand).sum(1)


class TensorFusion(nn.Module):
    """Tensor fusion (Zadeh et al. 2017): the outer product of ``[h_m; 1]`` over the modalities, flattened.

    The appended 1 keeps every unimodal and every lower-order interaction term in the product (a missing
    modality leaves ``[0; 1]``, i.e. exactly the terms of the others); its size is ``(d + 1)^M``."""

    decision = False  # feature level: the head turns the fused vector into logits

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.out_dim = (dim + 1) ** num_modalities

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        h = _zero_missing(h, present)
        ones = h[0].new_ones(h[0].shape[0], 1)
        fused = torch.cat([h[0], ones], dim=-1)
        for x in h[1:]:
            fused = torch.einsum("bi,bj->bij", fused, torch.cat([x, ones], dim=-1)).flatten(1)
        return fused


class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al. 2018): the tensor-fusion weight as a sum of ``rank``
    products of per-modality factors, ``Σ_r λ_r Π_m ([h_m; 1] W_m^(r)) + b``, never forming the product.

    ``[h; 1] W`` is an affine map, so each modality's factors are one ``Linear(d, rank·out)`` (its bias is
    the row for the appended 1); λ and b are one ``Linear(rank, 1)`` applied across the rank axis."""

    decision = False  # feature level: the head turns the fused vector into logits

    def __init__(self, num_modalities: int, dim: int, rank: int, out: int) -> None:
        super().__init__()
        self.factors = nn.ModuleList(nn.Linear(dim, rank * out) for _ in range(num_modalities))
        self.combine = nn.Linear(rank, 1)
        self.rank, self.out_dim = rank, out

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        h = _zero_missing(h, present)
        prod = None
        for factor, x in zip(self.factors, h, strict=True):
            f = factor(x).reshape(-1, self.rank, self.out_dim)
            prod = f if prod is None else prod * f
        return self.combine(prod.transpose(1, 2)).squeeze(-1)  # [B, out]


class _Block(nn.Module):
    """Pre-norm transformer encoder block. Written out (not nn.TransformerEncoderLayer) so Opacus can
    swap its attention for DPMultiheadAttention: the stock layer's fast path reads attributes the
    replacement does not have."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
        )

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, key_padding_mask=pad, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class TransformerFusion(nn.Module):
    """A small cross-modal transformer: the tokens of every modality, each with a learned position embedding
    of its own modality (so it also tells the modality), after a learned [CLS] token; self-attention across
    all of them; the [CLS] output is the fused vector. A missing modality's tokens are masked out."""

    decision = False  # feature level: the head turns the fused vector into logits

    def __init__(
        self,
        tokens: list[int],
        dim: int,
        layers: int = 2,
        heads: int = 4,
        ffn_mult: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.cls = LearnedOffset(1, dim)
        self.positions = nn.ModuleList(LearnedOffset(p, dim) for p in tokens)
        self.blocks = nn.ModuleList(_Block(dim, heads, ffn_mult, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        b = h[0].shape[0]
        cls = self.cls(h[0].new_zeros(b, 1, h[0].shape[-1]))
        x = torch.cat([cls, *(pos(t) for pos, t in zip(self.positions, h, strict=True))], dim=1)
        keep = [present.new_ones(b, 1)] + [
            present[:, m : m + 1].expand(-1, t.shape[1]) for m, t in enumerate(h)
        ]
        pad = torch.cat(keep, dim=1) <= 0  # True = ignored by attention
        for block in self.blocks:
            x = block(x, pad)
        return self.norm(x[:, 0])
