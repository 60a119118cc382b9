"""Perceiver resampler (Flamingo, Alayrac et al. 2022): a fixed set of learned latents reads any
number of encoder tokens through a few layers of cross-attention + feed-forward, so every image
becomes ``num_latents`` tokens whatever the encoder's grid.

As in Flamingo, the latents also attend to themselves: keys and values are the concatenation of the
(normalised) media tokens and the latents. Like Flamingo's resampler (which adds learned *time*
embeddings for video frames only), no spatial position embedding is added: the latents see the media
tokens as a set. The attention itself is PyTorch's ``nn.MultiheadAttention``; only the wiring is ours.
"""

from __future__ import annotations

import torch
from torch import nn

from omnifuse.errors import OmnifuseError


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.media_norm = nn.LayerNorm(dim)
        self.latent_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim)
        )

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        q = self.latent_norm(latents)
        kv = torch.cat([self.media_norm(media), q], dim=1)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.ffn(latents)


class PerceiverResampler(nn.Module):
    """[B, P, in_dim] (any P) → [B, num_latents, out_dim]."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_latents: int = 64,
        depth: int = 2,
        heads: int = 8,
        dim: int | None = None,
        ffn_mult: int = 4,
    ) -> None:
        super().__init__()
        dim = dim or out_dim
        if dim % heads:
            raise OmnifuseError(
                f"perceiver connector: its width {dim} is not divisible by heads={heads}; choose heads that "
                f"divide {dim}, or set the connector's dim"
            )
        self.input_proj = nn.Linear(in_dim, dim)
        # Flamingo initialises the latents from a normal distribution (std 1), then LayerNorms them.
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim, heads, ffn_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, out_dim)

    def output_grid(self, input_grid: tuple[int, int] | None) -> None:
        """Learned latents read the whole image: no output token belongs to an image region."""
        return None

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.latents.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        media = self.input_proj(features)
        latents = self.latents.unsqueeze(0).expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.output_proj(self.norm(latents))
