"""Temporal connectors: a clip's frame tokens ``[B, N·P, D]`` (omnifuse.encoders.video) → LLM tokens.

* :class:`VideoQFormer` — Video-LLaMA's video Q-Former: each frame's tokens (optionally pooled to a few)
  get a learned embedding of the frame's position in the clip, then learned queries cross-attend to all
  frames in a small BERT (transformers' ``Blip2QFormerModel``, cross-attention in every layer); padded
  frames are masked. Always ``num_queries`` tokens, whatever the number of frames.
* :class:`FramePool` — the cheap baseline: each frame pooled (average, max or both) to grid² tokens and projected;
  the frames' tokens follow each other in time order (``n · grid²`` tokens). With ``timestamps`` the
  processor writes each frame's time before its tokens ("at 1.5 s:"), which is how the LLM learns when.

Both take and return ``(features, lengths)`` like the audio connector: a clip's frames vary with ``fps``
sampling.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from omnifuse.connectors.linear import LinearConnector
from omnifuse.connectors.mlp import MLPConnector
from omnifuse.connectors.pool import POOLINGS, pooling_functions
from omnifuse.errors import OmnifuseError


def _pool_frames(
    x: torch.Tensor, grid: tuple[int, int] | None, tokens: int | None, pooling: str = "avg"
) -> torch.Tensor:
    """``x`` [B, N, P, D] with each frame's P tokens pooled to ``tokens`` (a k×k grid when the frame's
    tokens are a grid and ``tokens`` is a square, else along the token axis), by ``pooling`` (a key of
    :data:`POOLINGS`; avgmax concatenates both: [B, N, tokens, 2·D]). ``tokens`` None: unchanged."""
    b, n, p, d = x.shape
    if tokens is None:
        return x
    tokens = min(tokens, p)
    k = int(round(tokens**0.5))
    if grid is not None and k * k == tokens and grid[0] * grid[1] == p:
        maps, size = x.reshape(b * n, grid[0], grid[1], d).permute(0, 3, 1, 2), (k, k)
    else:  # the tokens as a P×1 map
        maps, size = x.reshape(b * n, p, 1, d).permute(0, 3, 1, 2), (tokens, 1)
    pooled = torch.cat([pool(maps, size) for pool in POOLINGS[pooling]], dim=1)
    return pooled.flatten(2).transpose(1, 2).reshape(b, n, tokens, -1)


def _projector(kind: str, in_dim: int, out_dim: int, hidden: int | None) -> nn.Module:
    return LinearConnector(in_dim, out_dim) if kind == "linear" else MLPConnector(in_dim, out_dim, hidden)


class FramePool(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens_per_frame: int,
        frame_grid: tuple[int, int] | None,
        grid: int = 1,
        projector: str = "mlp",
        hidden: int | None = None,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        width = len(pooling_functions(pooling, "frame_pool"))  # avgmax: both, concatenated
        if grid > 1 and (frame_grid is None or min(frame_grid) < grid):
            raise OmnifuseError(
                f"connectors.video.grid {grid}: the image encoder's frame tokens are {frame_grid or 'no grid'}, "
                "which cannot be pooled to that grid; use grid: 1"
            )
        self.tokens_per_frame, self.frame_grid, self.grid = tokens_per_frame, frame_grid, grid
        self.pooling = pooling
        self.projector = _projector(projector, in_dim * width, out_dim, hidden)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens // self.tokens_per_frame * self.grid**2

    def output_grid(self, input_grid: tuple[int, int] | None) -> None:
        return None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, total, d = features.shape
        x = features.reshape(b, total // self.tokens_per_frame, self.tokens_per_frame, d)
        x = _pool_frames(x, self.frame_grid, self.grid**2, self.pooling)  # [B, N, g², D or 2·D]
        out = self.projector(x.reshape(b, -1, x.shape[-1]))
        return out, lengths // self.tokens_per_frame * self.grid**2


class VideoQFormer(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens_per_frame: int,
        frame_grid: tuple[int, int] | None,
        max_frames: int,
        num_queries: int = 32,
        layers: int = 2,
        hidden: int = 256,
        heads: int = 4,
        frame_tokens: int | None = 4,
        projector: str = "linear",
    ) -> None:
        super().__init__()
        self.tokens_per_frame, self.frame_grid = tokens_per_frame, frame_grid
        self.frame_tokens = None if frame_tokens is None or frame_tokens >= tokens_per_frame else frame_tokens
        self.num_queries, self.max_frames = num_queries, max_frames
        config = Blip2QFormerConfig(
            vocab_size=2,  # no text passes through this Q-Former
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            cross_attention_frequency=1,
            encoder_hidden_size=in_dim,
            max_position_embeddings=max(num_queries, 32),
        )
        self.qformer = Blip2QFormerModel(config).float()
        self.frame_position = nn.Embedding(max_frames, in_dim)  # Video-LLaMA's frame position embedding
        self.frame_norm = nn.LayerNorm(in_dim)
        self.query_tokens = nn.Parameter(torch.empty(1, num_queries, hidden))
        nn.init.normal_(self.query_tokens, std=config.initializer_range)
        nn.init.normal_(self.frame_position.weight, std=config.initializer_range)
        self.projector = _projector(projector, hidden, out_dim, None)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def output_grid(self, input_grid: tuple[int, int] | None) -> None:
        return None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, total, d = features.shape
        n = total // self.tokens_per_frame
        if n > self.max_frames:
            raise OmnifuseError(
                f"a clip of {n} frames reached the video Q-Former, which has position embeddings for "
                f"{self.max_frames}; sample at most {self.max_frames} frames"
            )
        x = features.reshape(b, n, self.tokens_per_frame, d)
        x = _pool_frames(x, self.frame_grid, self.frame_tokens)
        x = x + self.frame_position.weight[:n][None, :, None, :]
        per_frame = x.shape[2]
        x = self.frame_norm(x.reshape(b, n * per_frame, d))
        frames = lengths // self.tokens_per_frame
        mask = (torch.arange(n, device=x.device)[None, :] < frames[:, None]).repeat_interleave(
            per_frame, dim=1
        )
        out = self.qformer(
            query_embeds=self.query_tokens.expand(b, -1, -1),
            encoder_hidden_states=x,
            encoder_attention_mask=mask.long(),
        ).last_hidden_state
        return self.projector(out), torch.full_like(lengths, self.num_queries)
