"""EfficientNet-Lite0 in plain PyTorch, with efficientnet_pytorch's parameter names (``_conv_stem``,
``_blocks.N._expand_conv`` …, ``_conv_head``, ``_fc``) so the packaged TF-ported weights load strictly.

"Lite" differs from EfficientNet-B0 in ways that matter for exact outputs: ReLU6 instead of swish, no
squeeze-and-excitation, fixed stem (32) and head (1280) widths. The weights come from TensorFlow, so the
convolutions use TF "SAME" padding (asymmetric: the extra pixel goes right/bottom) and BatchNorm
eps 1e-3; inputs are raw pixels scaled as (x − 127) / 128 after a bicubic resize. As an encoder it
returns the 7×7×1280 map after the head convolution, flattened row-major into 49 tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from omnifuse.encoders.vision.cnn import ImageNetCNN, load_cnn

# (x − 127) / 128 on 0..255 pixels, written as mean/std on 0..1 pixels
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed per input size (so any image size works)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without SE: [expand 1×1] → depthwise k×k → project 1×1 (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_skip else h


# (kernel, first stride, expansion, in channels, out channels, repeats) -- EfficientNet-B0 stages,
# unscaled (Lite0 has width = depth = 1.0)
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


class EfficientNetLite0(ImageNetCNN):
    """EfficientNet-Lite0 as an image encoder: ``forward`` → [B, h·w, 1280] grid tokens."""

    mean, std, resample = LITE_MEAN, LITE_STD, Image.BICUBIC  # bicubic resize, (x − 127) / 128

    def __init__(self, image_size: int = 224, crop: bool = True, num_classes: int = 1000) -> None:
        super().__init__(image_size, crop)
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for kernel, stride, expand, cin, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, self.output_dim, 1)
        self._bn1 = _bn(self.output_dim)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(self.output_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))  # [B, 1280, h, w]

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(pooled))


def build_efficientnet_lite0(
    weights: str | None = "efficientnet_lite0", image_size: int = 224, crop: bool = True
) -> EfficientNetLite0:
    """EfficientNet-Lite0 encoder in eval mode. ``weights``: packaged asset name or ``.safetensors``
    path; None = random initialisation (tests)."""
    return load_cnn(EfficientNetLite0(image_size=image_size, crop=crop), weights, "EfficientNet-Lite0")
