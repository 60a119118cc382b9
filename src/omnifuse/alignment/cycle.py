"""A cycle-consistent cross-modal autoencoder.

Each modality has an encoder into a shared latent space and a decoder out of it, so A can be translated
to B as dec_b(enc_a(a)) and back. Training on paired (a, b) combines

* reconstruction:   dec_a(enc_a(a)) ≈ a,  dec_b(enc_b(b)) ≈ b
* translation:      dec_b(enc_a(a)) ≈ b,  dec_a(enc_b(b)) ≈ a           (the paired supervision)
* cycle:            A→B→A: dec_a(enc_b(dec_b(enc_a(a)))) ≈ a, and B→A→B likewise

(mean squared errors; features should be standardised so the two modalities weigh alike). The cycle
terms ask a translation to keep what is needed to come back, the constraint of CycleGAN-style models,
here on features and with pairs. Retrieval compares a translation with the other modality's items by
cosine similarity, in the target modality's feature space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class CycleLosses:
    reconstruction: torch.Tensor
    translation: torch.Tensor
    cycle: torch.Tensor

    def parts(self) -> dict[str, float]:
        return {k: getattr(self, k).item() for k in ("reconstruction", "translation", "cycle")}


class CycleAutoencoder(nn.Module):
    """Encoders and decoders of two modalities around one latent space; ``forward`` is the weighted
    loss ``reconstruction + translation_weight·translation + cycle_weight·cycle``."""

    def __init__(
        self,
        enc_a: nn.Module,
        dec_a: nn.Module,
        enc_b: nn.Module,
        dec_b: nn.Module,
        translation_weight: float = 1.0,
        cycle_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.enc_a, self.dec_a, self.enc_b, self.dec_b = enc_a, dec_a, enc_b, dec_b
        self.translation_weight, self.cycle_weight = translation_weight, cycle_weight

    def a_to_b(self, a: torch.Tensor) -> torch.Tensor:
        return self.dec_b(self.enc_a(a))

    def b_to_a(self, b: torch.Tensor) -> torch.Tensor:
        return self.dec_a(self.enc_b(b))

    def losses(self, a: torch.Tensor, b: torch.Tensor) -> CycleLosses:
        za, zb = self.enc_a(a), self.enc_b(b)
        ab, ba = self.dec_b(za), self.dec_a(zb)
        return CycleLosses(
            reconstruction=F.mse_loss(self.dec_a(za), a) + F.mse_loss(self.dec_b(zb), b),
            translation=F.mse_loss(ab, b) + F.mse_loss(ba, a),
            cycle=F.mse_loss(self.b_to_a(ab), a) + F.mse_loss(self.a_to_b(ba), b),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        parts = self.losses(a, b)
        return (
            parts.reconstruction
            + self.translation_weight * parts.translation
            + self.cycle_weight * parts.cycle
        )
