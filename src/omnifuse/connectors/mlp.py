"""Two-layer MLP with GELU (LLaVA-1.5's ``mlp2x_gelu`` projector)."""

from __future__ import annotations

import torch
from torch import nn


class MLPConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def output_grid(self, input_grid: tuple[int, int] | None) -> tuple[int, int] | None:
        """Token ``i`` is encoder token ``i``: the encoder's grid (rows, cols), if it has one."""
        return input_grid

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))
