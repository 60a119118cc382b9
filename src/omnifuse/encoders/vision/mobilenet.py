"""MobileNetV2 in plain PyTorch, with torchvision's parameter names so its ImageNet weights load strictly.

torchvision itself is not a dependency (on these machines installing it pulls a different torch), so the
network and its eval transform are written out here. As an encoder (omnifuse.encoders.vision.cnn) it
returns the final 7×7 feature map (``features`` output, 1280 channels) flattened row-major into 49 tokens.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from omnifuse.encoders.vision.cnn import ImageNetCNN, load_cnn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class MobileNetV2(ImageNetCNN):
    """MobileNetV2 (ImageNet layout) as an image encoder: ``forward`` → [B, h·w, 1280] grid tokens."""

    mean, std, resample = IMAGENET_MEAN, IMAGENET_STD, Image.BILINEAR

    def __init__(self, image_size: int = 224, crop: bool = True, num_classes: int = 1000) -> None:
        super().__init__(image_size, crop)
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

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)  # [B, 1280, h, w]

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


def build_mobilenet_v2(
    weights: str | None = "mobilenet_v2", image_size: int = 224, crop: bool = True
) -> MobileNetV2:
    """MobileNetV2 encoder in eval mode. ``weights``: packaged asset name or ``.safetensors`` path;
    None = random initialisation (tests)."""
    return load_cnn(MobileNetV2(image_size=image_size, crop=crop), weights, "MobileNetV2")
