"""Pixel shuffle (space-to-depth) connector (nanoVLM, Idefics3): each r×r block of the encoder's
square token grid becomes one token with r² times the channels, then a projector maps it to the LLM
width. Tokens ÷ r², nothing is averaged away (unlike pooling): the projector learns what to keep.

The rearrangement is PyTorch's ``F.pixel_unshuffle``; its channel order is channel-major: output
channel ``c·r² + i·r + j`` holds input channel ``c`` of the block's pixel at row ``i``, column ``j``.
(nanoVLM orders them pixel-major; with a learned projector after it the two are equivalent.)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError


class PixelShuffleConnector(nn.Module):
    def __init__(self, factor: int, projector: nn.Module) -> None:
        super().__init__()
        self.factor = factor
        self.projector = projector  # built for in_dim · factor² input channels

    def grid_side(self, num_input_tokens: int) -> int:
        side = math.isqrt(num_input_tokens)
        if side * side != num_input_tokens:
            raise OmnifuseError(
                f"pixel_shuffle connector needs a square token grid, but the encoder yields {num_input_tokens} "
                f"tokens (not n×n); use an encoder without extra tokens (e.g. hf with drop_cls: true)"
            )
        if side % self.factor:
            raise OmnifuseError(
                f"pixel_shuffle connector: the encoder's {side}×{side} token grid is not divisible by factor "
                f"{self.factor}; choose a factor that divides {side}, or change the encoder's image_size so "
                "that its grid does (MobileNetV2/EfficientNet grids are image_size/32, rounded up)"
            )
        return side

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return (self.grid_side(num_input_tokens) // self.factor) ** 2

    def output_grid(self, input_grid: tuple[int, int] | None) -> tuple[int, int] | None:
        """Each output token is one factor×factor block of the encoder's grid (rows, cols ÷ factor)."""
        if input_grid is None:
            return None
        return input_grid[0] // self.factor, input_grid[1] // self.factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, p, d = features.shape
        side = self.grid_side(p)
        grid = features.transpose(1, 2).reshape(b, d, side, side)  # row-major tokens → [B, D, H, W]
        shuffled = F.pixel_unshuffle(grid, self.factor)  # [B, D·r², H/r, W/r]
        return self.projector(shuffled.flatten(2).transpose(1, 2))
