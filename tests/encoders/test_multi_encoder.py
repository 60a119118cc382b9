"""Several encoders for one modality: packing of different transforms, channel and token combination,
clear errors, the builder and the training loop; the real MobileNetV2 + EfficientNet-Lite0 pair."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from omnifuse.encoders.multi import MultiEncoder
from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_encoder, build_model
from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
from tiny import TinyVisionEncoder, make_parts, tiny_recipe_dict


def pair(combine: str, dim_b: int = 8) -> MultiEncoder:
    torch.manual_seed(0)
    small = TinyVisionEncoder(image_size=32, output_dim=16)  # 4×4 grid
    big = TinyVisionEncoder(image_size=64, output_dim=dim_b)  # 8×8 grid
    return MultiEncoder([small, big], combine).eval()


def images(n: int = 2) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(1)
    return [
        Image.fromarray(torch.randint(0, 256, (40, 50, 3), generator=gen).byte().numpy()) for _ in range(n)
    ]


def test_preprocess_packs_each_encoders_own_transform():
    enc = pair("channel")
    image = images(1)[0]
    packed = enc.preprocess(image)
    assert packed.shape == (3 * 32 * 32 + 3 * 64 * 64,)
    a, b = enc.unpack(packed[None])
    torch.testing.assert_close(a[0], enc.encoders[0].preprocess(image))  # 32 px
    torch.testing.assert_close(b[0], enc.encoders[1].preprocess(image))  # 64 px
    with pytest.raises(OmnifuseError, match="expected 15360"):
        enc.unpack(torch.zeros(1, 10))


def test_channel_combination_pools_to_the_smallest_grid():
    enc = pair("channel")
    assert enc.output_dim == 24 and enc.num_tokens() == 16
    batch = torch.stack([enc.preprocess(im) for im in images()])
    with torch.no_grad():
        out = enc(batch)
        a, b = (e(x) for e, x in zip(enc.encoders, enc.unpack(batch), strict=True))
    assert out.shape == (2, 16, 24)
    torch.testing.assert_close(out[..., :16], a)  # the 4×4 encoder passes through
    # 8×8 → 4×4 is the mean of each 2×2 block (row-major tokens): token (1, 2) = rows 2–3, cols 4–5.
    grid = b.reshape(2, 8, 8, 8)
    block = grid[:, 2:4, 4:6].mean(dim=(1, 2))
    torch.testing.assert_close(out[:, 1 * 4 + 2, 16:], block)


def test_token_combination_concatenates_sequences():
    enc = pair("token", dim_b=16)
    assert enc.output_dim == 16 and enc.num_tokens() == 16 + 64
    batch = torch.stack([enc.preprocess(im) for im in images()])
    with torch.no_grad():
        out = enc(batch)
        a, b = (e(x) for e, x in zip(enc.encoders, enc.unpack(batch), strict=True))
    assert torch.equal(out, torch.cat([a, b], dim=1))


def test_clear_errors():
    with pytest.raises(OmnifuseError, match=r"equal output widths, got \[16, 8\]"):
        pair("token", dim_b=8)
    with pytest.raises(OmnifuseError, match="at least two"):
        MultiEncoder([TinyVisionEncoder()])

    class NotSquare(TinyVisionEncoder):
        def num_tokens(self) -> int:
            return 17

    with pytest.raises(OmnifuseError, match=r"square token grids.*#1 \(17 tokens\)"):
        MultiEncoder([TinyVisionEncoder(), NotSquare()], "channel")


def test_builder_makes_the_real_cnn_pair_with_random_weights():
    spec = parse_recipe(
        tiny_recipe_dict("unused.jsonl")
        | {
            "model": {
                "encoders": {"image": {"type": "multi", "encoders": [
                    {"type": "mobilenet_v2", "weights": None, "image_size": 64},
                    {"type": "efficientnet_lite0", "weights": None, "image_size": 32},
                ]}},
                "connectors": {"image": {"type": "mlp"}},
            }
        }
    ).model  # fmt: skip
    enc = build_encoder(spec.encoders["image"])
    assert isinstance(enc, MultiEncoder) and enc.output_dim == 2560 and enc.num_tokens() == 1
    with torch.no_grad():
        assert enc(enc.preprocess(images(1)[0])[None]).shape == (1, 1, 2560)


def test_multi_encoder_trains_end_to_end(tmp_path, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["encoders"]["image"] = {
        "type": "multi",
        "encoders": [
            {"type": "mobilenet_v2", "weights": None},
            {"type": "efficientnet_lite0", "weights": None},
        ],
    }
    raw["stages"][0]["steps"], raw["stages"][1]["steps"] = 3, 1
    parts = make_parts() | {"encoders": {"image": pair("channel")}}  # tiny stand-ins for the two CNNs
    model, proc = build_model(
        parse_recipe(raw).model, **make_parts() | {"encoders": {"image": pair("channel")}}
    )
    assert model.tokens_per_item("image") == 16
    train(parse_recipe(raw), tmp_path / "run", parts=parts, progress=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.integration
def test_mobilenet_v2_and_efficientnet_lite0_together():
    import skimage.data

    from omnifuse.encoders.vision.efficientnet import build_efficientnet_lite0
    from omnifuse.encoders.vision.mobilenet import build_mobilenet_v2

    coffee = Image.fromarray(skimage.data.coffee())
    spec = parse_recipe(
        tiny_recipe_dict("unused.jsonl")
        | {
            "model": {
                "encoders": {"image": {"type": "multi", "encoders": [
                    {"type": "mobilenet_v2"}, {"type": "efficientnet_lite0", "image_size": 160},
                ]}},
                "connectors": {"image": {"type": "mlp"}},
            }
        }
    ).model  # fmt: skip
    enc = build_encoder(spec.encoders["image"])
    assert enc.num_tokens() == 25 and enc.output_dim == 2560  # 7×7 pooled to EfficientNet's 5×5
    with torch.no_grad():
        out = enc(enc.preprocess(coffee)[None])
        mobilenet, effnet = build_mobilenet_v2(), build_efficientnet_lite0(image_size=160)
        ref_b = effnet(effnet.preprocess(coffee)[None])
        ref_a = mobilenet(mobilenet.preprocess(coffee)[None])
    assert out.shape == (1, 25, 2560)
    torch.testing.assert_close(out[..., 1280:], ref_b)  # own transform: bicubic, (x − 127) / 128
    # MobileNetV2's 7×7 grid (its own transform: 256 → 224 crop, ImageNet mean/std) averaged to 5×5.
    grid = ref_a.transpose(1, 2).reshape(1, 1280, 7, 7)
    torch.testing.assert_close(out[..., :1280], F.adaptive_avg_pool2d(grid, 5).flatten(2).transpose(1, 2))
    # Both are the packaged ImageNet networks: each still calls the coffee an espresso.
    with torch.no_grad():
        a, b = enc.unpack(enc.preprocess(coffee)[None])
        assert enc.encoders[0].classify(a).argmax().item() == 967
        assert enc.encoders[1].classify(b).argmax().item() == 967
