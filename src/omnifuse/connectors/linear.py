"""Linear projection of every encoder token into the LLM's embedding space (LLaVA v1)."""

from __future__ import annotations

import torch
from torch import nn


class LinearConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def output_grid(self, input_grid: tuple[int, int] | None) -> tuple[int, int] | None:
        """Token ``i`` is encoder token ``i``: the encoder's grid (rows, cols), if it has one."""
        return input_grid

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [B, P, D_enc] -> [B, P, D_llm]
        return self.proj(features)
