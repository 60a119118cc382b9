"""MobileNetV2 in plain PyTorch, with torchvision's parameter names so its ImageNet weights load strictly.

torchvision itself is not a dependency (on these machines installing it pulls a different torch), so the
network and its eval transform are written out here. As an encoder it returns the final 7×7 feature map
(``features`` output, 1280 channels) flattened row-major into 49 tokens.

The image helpers at the top (:func:`resize_image`, :func:`to_tensor`, :func:`conv_grid`) are shared by
the other vision encoders in this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_safetensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ shared image helpers
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


# ------------------------------------------------------------------ network
def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # torchvision's Conv2dNormActivation: children 0 (conv), 1 (bn), 2 (act) → names "N.0.weight", "N.1.*".
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → project (1×1, linear), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s) -- torchvision's width_mult=1.0 table
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 (ImageNet layout) as an image encoder: ``forward`` → [B, h·w, 1280] grid tokens."""

    output_dim = 1280

    def __init__(self, image_size: int = 224, crop: bool = True, num_classes: int = 1000) -> None:
        super().__init__()
        self.image_size = image_size
        self.crop = crop
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, self.output_dim, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.output_dim, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so random-weight runs behave like an untrained torchvision model
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        return conv_grid(self.image_size if image_size is None else image_size)

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width``×``height`` image that :meth:`preprocess` keeps (left, top, right, bottom)."""
        return kept_region(
            width, height, self.image_size, crop_resize_size(self.image_size) if self.crop else None
        )

    def token_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the output tokens, row-major over the input image."""
        return self.grid()

    def num_tokens(self) -> int:
        h, w = self.grid()
        return h * w

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image → [3, S, S]: torchvision's eval transform (crop=True) or a plain square resize."""
        shorter = crop_resize_size(self.image_size) if self.crop else None
        return to_tensor(
            resize_image(image, self.image_size, shorter, Image.BILINEAR), IMAGENET_MEAN, IMAGENET_STD
        )

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)  # [B, 1280, h, w]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixel_values).flatten(2).transpose(1, 2)  # row-major grid → tokens

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.feature_map(pixel_values), 1).flatten(1)
        return self.classifier(pooled)


def load_safetensors_strict(module: nn.Module, path, what: str) -> None:
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


def build_mobilenet_v2(
    weights: str | None = "mobilenet_v2", image_size: int = 224, crop: bool = True
) -> MobileNetV2:
    """MobileNetV2 encoder in eval mode. ``weights``: packaged asset name or ``.safetensors`` path
    (resolved by :func:`omnifuse.assets.resolve_weights`); None = random initialisation (tests)."""
    model = MobileNetV2(image_size=image_size, crop=crop)
    if weights is not None:
        from omnifuse.assets import resolve_weights

        load_safetensors_strict(model, resolve_weights(weights), "MobileNetV2")
    return model.eval()
