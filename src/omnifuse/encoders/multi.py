"""Several encoders for one modality, fused into one token sequence (SPHINX, Prismatic's DINOv2 +
SigLIP): a composite with the same interface as a single encoder.

* **Preprocessing**: each sub-encoder keeps its own transform (sizes and normalisations differ). The
  composite's ``preprocess`` flattens each result and concatenates them into one 1-D tensor, so the
  processor's collate (``torch.stack``) works unchanged; ``forward`` splits the packed batch back by the
  sizes probed once at construction (each transform's output shape is fixed).
* **combine: channel** (Prismatic): each sub-encoder's square token grid is average-pooled
  (``F.adaptive_avg_pool2d``) to the smallest grid among them, then features are concatenated per
  token: ``min grid²`` tokens of ``Σ output_dim`` channels.
* **combine: token**: the token sequences are concatenated (``Σ tokens`` of the common ``output_dim``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from omnifuse.components import ImageEncoder
from omnifuse.errors import OmnifuseError


class MultiEncoder(nn.Module):
    def __init__(self, encoders: Sequence[nn.Module], combine: str = "channel") -> None:
        super().__init__()
        if len(encoders) < 2:
            raise OmnifuseError("a multi encoder needs at least two encoders; use the single encoder instead")
        self.encoders = nn.ModuleList(encoders)
        self.combine = combine
        self.sides = [math.isqrt(e.num_tokens()) for e in encoders]
        dims = [e.output_dim for e in encoders]
        if combine == "channel":
            bad = [
                f"#{i} ({e.num_tokens()} tokens)"
                for i, (e, s) in enumerate(zip(encoders, self.sides, strict=True))
                if s * s != e.num_tokens()
            ]
            if bad:
                raise OmnifuseError(
                    f"multi encoder with combine: channel needs square token grids, but encoder {', '.join(bad)} "
                    "is not n×n; drop its extra tokens (hf: drop_cls: true) or use combine: token"
                )
            self.output_dim = sum(dims)
            self.side = min(self.sides)
        elif combine == "token":
            if len(set(dims)) != 1:
                raise OmnifuseError(
                    f"multi encoder with combine: token needs equal output widths, got {dims}; "
                    "use combine: channel (widths add up) instead"
                )
            self.output_dim = dims[0]
        else:
            raise OmnifuseError(f"multi encoder: unknown combine {combine!r}; use channel or token")
        # The input side views are prepared at (tiling's default tile size): the largest sub-encoder's.
        sizes = [e.image_size if isinstance(e, ImageEncoder) else None for e in encoders]
        self.image_size = None if None in sizes else max(sizes)
        probe = Image.new("RGB", (64, 64))
        self.shapes = [tuple(e.preprocess(probe).shape) for e in encoders]

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The whole image: each sub-encoder keeps its own part of it (crop or not), so no one region
        stands for all of them."""
        return 0.0, 0.0, float(width), float(height)

    def token_grid(self) -> tuple[int, int] | None:
        """combine: channel keeps one side×side grid; combine: token concatenates several grids (no single one)."""
        return (self.side, self.side) if self.combine == "channel" else None

    def num_tokens(self) -> int:
        if self.combine == "channel":
            return self.side * self.side
        return sum(e.num_tokens() for e in self.encoders)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.cat([e.preprocess(image).flatten() for e in self.encoders])

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """[B, Σ sizes] → each sub-encoder's input batch."""
        sizes = [math.prod(s) for s in self.shapes]
        if packed.shape[1] != sum(sizes):
            raise OmnifuseError(
                f"multi encoder got inputs of {packed.shape[1]} values per item, expected {sum(sizes)}; "
                "preprocess images with this encoder's preprocess()"
            )
        return [
            part.reshape(packed.shape[0], *shape)
            for part, shape in zip(packed.split(sizes, dim=1), self.shapes, strict=True)
        ]

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        outputs = [e(x) for e, x in zip(self.encoders, self.unpack(packed), strict=True)]
        if self.combine == "token":
            return torch.cat(outputs, dim=1)
        pooled = []
        for tokens, side in zip(outputs, self.sides, strict=True):
            b, _, d = tokens.shape
            if side != self.side:
                grid = tokens.transpose(1, 2).reshape(b, d, side, side)
                tokens = F.adaptive_avg_pool2d(grid, self.side).flatten(2).transpose(1, 2)
            pooled.append(tokens)
        return torch.cat(pooled, dim=-1)
