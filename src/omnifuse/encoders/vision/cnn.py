"""What the ImageNet CNNs share (MobileNetV2, EfficientNet-Lite0), and the image helpers every vision
encoder here uses.

:class:`ImageNetCNN` holds the encoder interface (omnifuse.components.ImageEncoder) once: a square input
of ``image_size``, resized whole or centre-cropped at ImageNet's 256/224 ratio, normalised with the
network's own statistics; the output is the final feature map, 32× smaller than the input, flattened
row-major into tokens of 1280 channels. A network subclass gives its layers (``feature_map``), its
ImageNet head (``head``) and its transform constants; it keeps its own parameter names, so the packaged
weights load strictly (:func:`load_cnn`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_safetensors


def resize_image(
    image: Image.Image, size: int, resize_shorter: int | None, resample: int = Image.BILINEAR
) -> Image.Image:
    """RGB ``size``×``size`` image, the way torchvision's/HF's eval transforms make it.

    ``resize_shorter`` given: scale the shorter side to it (aspect kept) and take the centre
    ``size``×``size`` crop; ``None``: resize the whole image to ``size``×``size`` (keeps everything in
    view, which suits small full-frame images such as synthetic shapes)."""
    image = image.convert("RGB")
    if resize_shorter is None:
        return image.resize((size, size), resample)
    w, h = image.size
    if w <= h:
        nw, nh = resize_shorter, int(resize_shorter * h / w)
    else:
        nw, nh = int(resize_shorter * w / h), resize_shorter
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), resample)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def kept_region(
    width: int, height: int, size: int, resize_shorter: int | None
) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom), in the original image's pixels, that :func:`resize_image`
    turns into its ``size``×``size`` output: the whole image, or the centre crop's source region."""
    if resize_shorter is None:
        return 0.0, 0.0, float(width), float(height)
    if width <= height:
        nw, nh = resize_shorter, int(resize_shorter * height / width)
    else:
        nw, nh = int(resize_shorter * width / height), resize_shorter
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    sx, sy = width / nw, height / nh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image → float32 [3, H, W], pixels scaled to [0, 1] then normalised per channel."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def conv_grid(image_size: int, num_stride2: int = 5) -> tuple[int, int]:
    """Feature-grid size after ``num_stride2`` stride-2 convolutions with "same"-style padding
    (each one maps n → ceil(n / 2)); both CNNs here downsample 32× (224 → 7)."""
    n = image_size
    for _ in range(num_stride2):
        n = math.ceil(n / 2)
    return n, n


def crop_resize_size(image_size: int) -> int:
    """Shorter side before the centre crop: ImageNet's 256/224 ratio, scaled to ``image_size``."""
    return round(image_size * 256 / 224)


# ------------------------------------------------------------------ the shared encoder interface
class ImageNetCNN(nn.Module):
    """An ImageNet CNN as an image encoder: ``forward`` → [B, h·w, 1280] grid tokens."""

    output_dim = 1280
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    resample: ClassVar[int]  # PIL filter of the network's eval transform

    def __init__(self, image_size: int = 224, crop: bool = True) -> None:
        super().__init__()
        self.image_size = image_size
        self.crop = crop

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [B, 1280, h, w]
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor:  # [B, 1280] → ImageNet logits
        raise NotImplementedError

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        return conv_grid(self.image_size if image_size is None else image_size)

    def _shorter(self) -> int | None:
        return crop_resize_size(self.image_size) if self.crop else None

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width``×``height`` image that :meth:`preprocess` keeps (left, top, right, bottom)."""
        return kept_region(width, height, self.image_size, self._shorter())

    def token_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the output tokens, row-major over the input image."""
        return self.grid()

    def num_tokens(self) -> int:
        h, w = self.grid()
        return h * w

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image → [3, S, S]: the network's eval transform (crop=True) or a plain square resize."""
        return to_tensor(
            resize_image(image, self.image_size, self._shorter(), self.resample), self.mean, self.std
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixel_values).flatten(2).transpose(1, 2)  # row-major grid → tokens

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.feature_map(pixel_values), 1).flatten(1)
        return self.head(pooled)


def load_safetensors_strict(module: nn.Module, path: str | Path, what: str) -> None:
    """Load a safetensors state dict with strict key/shape checking; a mismatch is the user's to fix
    (wrong file for this architecture), so it becomes an OmnifuseError naming the first differences."""
    from safetensors.torch import load_file

    check_safetensors(path, f"{what} weights file")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types (an unknown dtype, a damaged header)
        raise OmnifuseError(
            f"{what} weights file {path} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
            "save the weights again with safetensors"
        ) from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise OmnifuseError(
            f"weights file {path} does not fit {what} ({details}). Use weights saved from this architecture "
            f"(the packaged default, or a state dict with the same parameter names), or null for random weights."
        )
    module.load_state_dict(state, strict=True)


def load_cnn(model: ImageNetCNN, weights: str | None, what: str) -> ImageNetCNN:
    """``model`` with ``weights`` (packaged asset name or ``.safetensors`` path, resolved by
    :func:`omnifuse.assets.resolve`; None = its random initialisation, for tests), in eval mode."""
    if weights is not None:
        from omnifuse.assets import AssetKind, resolve

        load_safetensors_strict(model, resolve(weights, AssetKind.VISION), what)
    return model.eval()
