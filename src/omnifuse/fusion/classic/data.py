"""Data-level fusion: aligned raw inputs stacked as channels of one input, read by one small CNN.

Each modality gives a 2-D map of the same shape (pixel rows × columns, log-mel time segments × bands); the
maps become the channels of one image, so the very first convolution already mixes the modalities. Group
normalisation instead of batch normalisation keeps it trainable with DP-SGD (per-sample gradients need
layers without cross-sample statistics).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.ReLU())


class DataFusion(nn.Module):
    """``[B, H, W]`` per modality → channels ``[B, M, H, W]`` → two conv blocks → global average ``[B, 2c]``."""

    decision = False

    def __init__(self, num_modalities: int, channels: int = 32) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            _block(num_modalities, channels),
            nn.MaxPool2d(2),
            _block(channels, 2 * channels),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 2 * channels

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        maps = torch.stack(h, dim=1) * present[:, :, None, None]
        return self.cnn(maps)
