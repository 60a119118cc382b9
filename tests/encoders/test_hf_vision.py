"""HFVisionEncoder on tiny random towers (hidden 32, 2 layers, 32×32 images, 8×8 patches → 16 patches)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    ViTConfig,
)

from omnifuse.encoders.vision.hf import HFVisionEncoder, build_hf_vision, from_config
from omnifuse.errors import OmnifuseError

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
# config class → leading non-patch tokens
TOWERS = {
    "clip": (CLIPVisionConfig, 1),
    "siglip": (SiglipVisionConfig, 0),
    "vit": (ViTConfig, 1),
    "dinov2": (Dinov2Config, 1),
}


def _tiny(kind: str, **kwargs) -> HFVisionEncoder:
    torch.manual_seed(0)
    return from_config(TOWERS[kind][0](**TINY), **kwargs).eval()


@pytest.mark.parametrize("kind", sorted(TOWERS))
@pytest.mark.parametrize("drop_cls", [True, False])
def test_token_counts(kind, drop_cls):
    enc = _tiny(kind, drop_cls=drop_cls)
    prefix = TOWERS[kind][1]
    assert enc.num_prefix_tokens == prefix
    assert enc.output_dim == 32 and enc.grid() == (4, 4)
    expected = 16 if drop_cls else 16 + prefix
    assert enc.num_tokens() == expected
    with torch.no_grad():
        assert enc(torch.randn(3, 3, 32, 32)).shape == (3, expected, 32)


def test_register_tokens_are_dropped_too():
    enc = from_config(Dinov2WithRegistersConfig(**TINY, num_register_tokens=4)).eval()
    assert enc.num_prefix_tokens == 5 and enc.num_tokens() == 16
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)


@pytest.mark.parametrize("kind", sorted(TOWERS))
@pytest.mark.parametrize("layer", [-1, -2, 0, 1])
def test_layer_is_that_hidden_state(kind, layer):
    enc = _tiny(kind, layer=layer, drop_cls=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = enc.tower(pixel_values=x, output_hidden_states=True).hidden_states[layer]
        torch.testing.assert_close(enc(x), expected)
    dropped = _tiny(kind, layer=layer, drop_cls=True)
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), expected[:, TOWERS[kind][1] :])


@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_gradient_flows_into_the_tower(kind):
    enc = _tiny(kind, layer=-2)
    pixels = torch.randn(2, 3, 32, 32, requires_grad=True)
    enc(pixels).square().mean().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    # every block up to the chosen layer takes part (unused extras such as DINOv2's mask token do not)
    # (layer=-2 of 2 blocks: block 0 feeds the output, block 1 does not)
    params = dict(enc.tower.named_parameters())
    block0 = [n for n in params if "layer" in n and ".0." in n]
    block1 = [n for n in params if "layer" in n and ".1." in n]
    assert block0 and all(params[n].grad is not None for n in block0)
    assert block1 and all(params[n].grad is None for n in block1)
    patch = [p for n, p in enc.tower.embeddings.named_parameters() if p.dim() == 4]  # the patch conv
    assert patch and all(p.grad is not None and p.grad.abs().sum() > 0 for p in patch)


def test_bad_layer_is_a_user_error():
    with pytest.raises(OmnifuseError, match=r"\[-3, 2\]"):
        _tiny("clip", layer=3)
    assert _tiny("clip", layer=-3).layer == -3  # the embeddings output


def test_preprocess_uses_the_given_statistics():
    enc = _tiny("vit", mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), image_size=32)
    out = enc.preprocess(Image.new("RGB", (50, 70), (255, 255, 255)))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.8, 1.6, 1.4]))


def test_build_dual_tower_checkpoint_keeps_the_vision_side(tmp_path):
    torch.manual_seed(0)
    full = SiglipModel(SiglipConfig(vision_config=TINY, text_config=TINY_TEXT))
    full.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "size": {"height": 32, "width": 32},
                "resample": 2,
            }
        )
    )
    enc = build_hf_vision(str(tmp_path), layer=-1)
    assert not enc.training and not hasattr(enc.tower, "text_model")
    assert enc.num_tokens() == 16 and enc.resize_shorter is None and enc.resample == Image.BILINEAR
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(enc(x), expected)


def test_build_reads_the_crop_from_the_processor_config(tmp_path):
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "size": {"shortest_edge": 36},
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "resample": 3,
            }
        )
    )
    enc = build_hf_vision(str(tmp_path), drop_cls=False)
    assert (enc.image_size, enc.resize_shorter, enc.num_tokens()) == (32, 36, 17)
    assert enc.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert enc(enc.preprocess(Image.new("RGB", (64, 48)))[None]).shape == (1, 17, 32)


def test_build_without_processor_config_uses_the_model_size(tmp_path):
    Dinov2Model(Dinov2Config(**TINY)).save_pretrained(tmp_path)
    enc = build_hf_vision(str(tmp_path))
    assert enc.image_size == 32 and enc.mean == (0.5, 0.5, 0.5) and enc.num_tokens() == 16


def test_build_clip_dual_tower(tmp_path):
    CLIPModel(CLIPConfig(vision_config=TINY, text_config=TINY_TEXT)).save_pretrained(tmp_path)
    enc = build_hf_vision(str(tmp_path), layer=-2)
    assert isinstance(enc.tower, CLIPVisionModel) and enc.num_tokens() == 16


def test_unloadable_tower_is_a_user_error(tmp_path):
    with pytest.raises(OmnifuseError, match="vision tower folder .* is empty"):
        build_hf_vision(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (tmp_path / "model.safetensors").write_text("not weights")
    with pytest.raises(OmnifuseError, match="no safetensors header"):
        build_hf_vision(str(tmp_path))
    Dinov2Model(Dinov2Config(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(OmnifuseError, match="could not load the vision tower"):
        build_hf_vision(str(tmp_path))
