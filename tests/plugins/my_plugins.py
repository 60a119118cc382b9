"""A user's own components, outside omnifuse (tests/plugins is put on sys.path by the tests; a real
project installs its package). docs/extending.md walks through this file."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import nn

from omnifuse import recipe


class ScaledLinear(nn.Module):
    """A connector: one linear map to the LLM's width, times a fixed scale; one token per encoder token."""

    class Spec(
        recipe.Spec
    ):  # the recipe options: `connectors: {image: {type: my_plugins.ScaledLinear, scale: 0.5}}`
        scale: float = Field(1.0, gt=0, description="multiplies the projected features")

    def __init__(self, in_dim: int, out_dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.scale = scale

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def output_grid(self, input_grid: tuple[int, int] | None) -> tuple[int, int] | None:
        return input_grid  # token k stays over the same image region

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [B, P, D_enc] → [B, P, D_llm]
        return self.proj(features) * self.scale


class PatchEncoder(nn.Module):
    """An image encoder: non-overlapping patches of a square resize, each linearly embedded."""

    modality = "image"

    class Spec(recipe.Spec):
        image_size: int = Field(32, ge=8)
        patch: int = Field(8, ge=1)
        width: int = Field(16, ge=1)

    def __init__(self, image_size: int = 32, patch: int = 8, width: int = 16) -> None:
        super().__init__()
        self.image_size, self.patch, self.output_dim = image_size, patch, width
        self.embed = nn.Conv2d(3, width, patch, stride=patch)

    def num_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    def token_grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch
        return side, side

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        return 0.0, 0.0, float(width), float(height)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        arr = np.asarray(image.convert("RGB").resize(size), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embed(pixel_values).flatten(2).transpose(1, 2)


class NotAConnector(nn.Module):
    """Lacks num_output_tokens and output_grid: refused when the recipe is validated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_connector(in_dim: int, out_dim: int) -> nn.Module:  # a function, not a class
    return ScaledLinear(in_dim, out_dim)
