"""Spatial pooling (average, max or both) of the encoder's square feature grid to k×k tokens, then a projector.

Fewer image tokens is the cheapest speed-up there is: every image token costs the LLM as much as a
text token (nanoVLM and Idefics3 compress for the same reason).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Each pooling's 2-D adaptive pooling functions; their outputs are concatenated along the channels
# (avgmax: twice the width). The frame-pool video connector pools each frame with the same table.
POOLINGS = {
    "avg": (F.adaptive_avg_pool2d,),
    "max": (F.adaptive_max_pool2d,),
    "avgmax": (F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
}


def pooling_functions(pooling: str, owner: str) -> tuple:
    """``pooling``'s functions from :data:`POOLINGS`, or a ValueError naming ``owner`` and the choices."""
    if pooling not in POOLINGS:
        raise ValueError(f"{owner} pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
    return POOLINGS[pooling]


class PoolConnector(nn.Module):
    def __init__(self, grid: int, projector: nn.Module, pooling: str = "avg") -> None:
        super().__init__()
        pooling_functions(pooling, "pool connector")
        self.grid = grid
        self.projector = projector
        self.pooling = pooling

    @staticmethod
    def width_factor(pooling: str) -> int:
        """How many feature vectors of the encoder's width each pooled token concatenates."""
        return len(pooling_functions(pooling, "pool connector"))

    def num_output_tokens(self, num_input_tokens: int) -> int:
        side = math.isqrt(num_input_tokens)
        if side * side != num_input_tokens:
            raise ValueError(f"pool connector needs a square token grid, got {num_input_tokens} tokens")
        if self.grid > side:
            raise ValueError(
                f"pool connector grid {self.grid} is larger than the encoder's {side}×{side} grid"
            )
        return self.grid * self.grid

    def output_grid(self, input_grid: tuple[int, int] | None) -> tuple[int, int] | None:
        """A k×k grid over the image for k > 1; one pooled token (k = 1) stands for the whole image and
        maps to no region, so it declares no grid."""
        if input_grid is None or self.grid == 1:
            return None
        return self.grid, self.grid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, p, d = features.shape
        side = math.isqrt(p)
        self.num_output_tokens(p)
        grid = features.transpose(1, 2).reshape(b, d, side, side)
        pooled = torch.cat([pool(grid, self.grid) for pool in POOLINGS[self.pooling]], dim=1)
        return self.projector(pooled.flatten(2).transpose(1, 2))
