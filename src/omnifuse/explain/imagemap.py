"""From maps over the encoder's input back to the original image: where the encoder's input lies in
the image (a centre crop, or the whole image) and a map resized onto that box."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.components import ImageEncoder


def input_box(encoder: nn.Module, width: int, height: int) -> tuple[int, int, int, int]:
    """Where the encoder's input square lies in the original image (the whole image unless the
    encoder's preprocessing crops; encoders say so through ``input_region``)."""
    whole = (0, 0, width, height)
    left, top, right, bottom = (
        encoder.input_region(width, height) if isinstance(encoder, ImageEncoder) else whole
    )
    left, top = max(0, round(left)), max(0, round(top))
    right, bottom = min(width, max(left + 1, round(right))), min(height, max(top + 1, round(bottom)))
    return left, top, right, bottom


def to_image(
    values: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int], mode: str
) -> np.ndarray:
    """A [h, w] map over the encoder's input, resized onto ``box`` of a ``size`` = (W, H) image; zero
    outside the box (pixels the encoder never saw)."""
    left, top, right, bottom = box
    resized = F.interpolate(
        values[None, None].float(),
        size=(bottom - top, right - left),
        mode=mode,
        **({"align_corners": False} if mode == "bilinear" else {}),
    )[0, 0]
    out = np.zeros((size[1], size[0]), dtype=np.float32)
    out[top:bottom, left:right] = resized.cpu().numpy()
    return out
