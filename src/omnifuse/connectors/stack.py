"""Frame stacking + projector for audio (Ultravox).

An audio encoder gives many frames per second (Whisper: 50), far more LLM tokens than a question needs.
Ultravox stacks ``factor`` consecutive frames into one vector (``factor``·D channels; frame
``t·factor + i`` fills channels ``[i·D, (i+1)·D)``, the tail padded with zeros) and projects it with
RMSNorm → linear → SwiGLU → linear → RMSNorm into the LLM's width: at factor 8, 6.25 tokens per second
of speech. The closing RMSNorm matches Ultravox's; its learned scale lets the tokens settle at the
norm of the LLM's own embeddings.

Variable length: ``forward(features [N, T, D], lengths [N])`` returns ``(tokens [N, ceil(T/factor), D_llm],
token_lengths [N])``; tokens past an item's length are padding that the fusion never reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.audio.align import stack_frames, stacked_lengths


class SwiGLU(nn.Module):
    """``silu(a) * b`` of the two halves of the last axis (Shazeer, 2020), as in Ultravox's projector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


class StackConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, factor: int = 8, hidden: int | None = None) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be at least 1, got {factor}")
        hidden = hidden or out_dim
        self.factor = factor
        stacked = in_dim * factor
        self.norm_in = nn.RMSNorm(stacked)
        self.fc1 = nn.Linear(stacked, 2 * hidden)
        self.act = SwiGLU()
        self.fc2 = nn.Linear(hidden, out_dim)
        self.norm_out = nn.RMSNorm(out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(num_input_tokens / self.factor)

    def output_grid(self, input_grid: tuple[int, int] | None) -> None:
        """Stacked frames in time order: no spatial grid."""
        return None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Frames past an item's length are padding: zero them so that an item's last stacked token is
        # the same whether it was batched with longer clips or not.
        real = (
            torch.arange(features.shape[1], device=features.device)[None, :]
            < lengths.to(features.device)[:, None]
        )
        stacked = stack_frames(features * real.unsqueeze(-1), self.factor)
        out = self.norm_out(self.fc2(self.act(self.fc1(self.norm_in(stacked)))))
        return out, stacked_lengths(lengths, self.factor)
