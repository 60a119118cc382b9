"""MobileNetV2 and EfficientNet-Lite0: shapes and preprocessing with random weights (fast), strict
loading and ImageNet sanity with the packaged weights (integration)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image

from omnifuse.assets import AssetKind, resolve
from omnifuse.encoders.vision.cnn import resize_image
from omnifuse.encoders.vision.efficientnet import Conv2dSame, EfficientNetLite0, build_efficientnet_lite0
from omnifuse.encoders.vision.mobilenet import MobileNetV2, build_mobilenet_v2
from omnifuse.errors import OmnifuseError

BUILDERS = {"mobilenet_v2": build_mobilenet_v2, "efficientnet_lite0": build_efficientnet_lite0}
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_grid_formula(name):
    for size, grid in [(224, 7), (32, 1), (64, 2), (96, 3), (100, 4), (225, 8), (336, 11)]:
        model = BUILDERS[name](weights=None, image_size=size)
        assert model.grid() == (grid, grid) and model.num_tokens() == grid * grid
        assert model.grid(64) == (2, 2)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("size", [224, 100])  # 100: odd sizes round up (ceil)
def test_tokens_and_logits(name, size):
    torch.manual_seed(0)
    model = BUILDERS[name](weights=None, image_size=size)
    assert not model.training and model.output_dim == 1280
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap = model.feature_map(x)
        tokens = model(x)
        logits = model.classify(x)
    h, w = model.grid()
    assert fmap.shape == (2, 1280, h, w)
    assert tokens.shape == (2, model.num_tokens(), 1280)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(tokens[:, 1], fmap[:, :, 0, 1])  # row-major: token 1 = row 0, column 1
    torch.testing.assert_close(tokens[:, w], fmap[:, :, 1, 0])  # token w = row 1, column 0


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_gradient_reaches_the_stem(name):
    model = BUILDERS[name](weights=None, image_size=64).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    stem = next(model.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_preprocess(name, crop):
    model = BUILDERS[name](weights=None, image_size=64, crop=crop)
    out = model.preprocess(Image.new("L", (120, 80), 127))  # greyscale input is converted to RGB
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    if isinstance(model, EfficientNetLite0):
        torch.testing.assert_close(out, torch.zeros_like(out))  # (127 − 127) / 128
    else:
        expected = (127 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
        torch.testing.assert_close(out[:, 5, 7], expected)


def test_crop_keeps_the_centre_and_plain_resize_keeps_everything():
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :40] = 255  # a white band at the left edge
    image = Image.fromarray(arr)
    cropped = np.asarray(resize_image(image, 64, 73, Image.BILINEAR))
    squashed = np.asarray(resize_image(image, 64, None, Image.BILINEAR))
    assert cropped.shape == squashed.shape == (64, 64, 3)
    assert cropped.max() == 0  # the band lies outside the centre crop
    assert squashed[:, :5].min() > 200  # ... but survives a whole-image resize


def test_torchvision_resize_rule():
    # Resize(256): shorter side 256, longer side truncated (500×375 → 341×256), then centre 224 crop
    image = Image.new("RGB", (500, 375))
    assert resize_image(image, 224, 256).size == (224, 224)
    model = MobileNetV2(image_size=160)
    assert model.preprocess(image).shape == (3, 160, 160)


def test_tf_same_padding_is_asymmetric():
    conv = Conv2dSame(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 224, 224)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)  # TF puts the extra pixel right/bottom
    torch.testing.assert_close(conv(x), expected)
    assert conv(torch.randn(1, 1, 7, 7)).shape[-1] == 4


def test_mismatched_weights_are_a_user_error(tmp_path):
    path = tmp_path / "mobilenet.safetensors"
    safetensors.torch.save_file(MobileNetV2().state_dict(), str(path))
    with pytest.raises(OmnifuseError, match="does not fit EfficientNet-Lite0"):
        build_efficientnet_lite0(weights=str(path))
    assert build_mobilenet_v2(weights=str(path)).num_tokens() == 49  # the right architecture loads


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_packaged_weights_match_parameter_names(name):
    packaged = safetensors.torch.load_file(str(resolve(name, AssetKind.VISION)))
    own = BUILDERS[name](weights=None).state_dict()
    assert own.keys() == packaged.keys()
    assert all(own[k].shape == packaged[k].shape for k in own)


@pytest.mark.integration
def test_mobilenet_v2_classifies_coffee_as_espresso(coffee):
    model = build_mobilenet_v2()
    with torch.no_grad():
        probs = model.classify(model.preprocess(coffee)[None]).softmax(-1)[0]
    assert probs.argmax().item() == ESPRESSO and probs[ESPRESSO] > 0.9
    with torch.no_grad():
        tokens = model(model.preprocess(coffee)[None])
    assert tokens.shape == (1, 49, 1280) and torch.isfinite(tokens).all()


@pytest.mark.integration
@pytest.mark.parametrize("crop", [True, False])
def test_efficientnet_lite0_classifies_coffee_as_espresso(coffee, crop):
    model = build_efficientnet_lite0(crop=crop)
    with torch.no_grad():
        probs = model.classify(model.preprocess(coffee)[None]).softmax(-1)[0]
    assert probs.argmax().item() == ESPRESSO and probs[ESPRESSO] > 0.8
    assert CUP in probs.topk(3).indices.tolist()
