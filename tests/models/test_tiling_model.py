"""Tiling through the whole model with the tiny parts: recipe option, placeholder/feature counts,
features landing at their views' placeholders, training steps, cached generation, and clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
from tiny import TinyVisionEncoder, make_parts, tiny_recipe_dict


def tiled_recipe(data, **tiling):
    raw = tiny_recipe_dict(data)
    raw["model"]["encoders"]["image"]["crop"] = False
    raw["model"]["connectors"]["image"] = {"type": "pool", "grid": 2, "projector": "linear"}
    raw["model"]["tiling"] = {"image": {"max_tiles": 4, **tiling}}
    return raw


def images() -> list[Image.Image]:
    small = Image.new("RGB", (20, 20), (200, 30, 30))
    return [Image.fromarray(getattr(skimage.data, n)()) for n in ("astronaut", "coffee", "rocket")] + [small]


def ask(i: int, image: Image.Image, answer: str | None = None) -> Sample:
    turns = [Message("user", (ImagePart(image=image), TextPart("what color is the shape?")))]
    if answer is not None:
        turns.append(Message("assistant", (TextPart(answer),)))
    return Sample(f"s{i}", tuple(turns))


@pytest.fixture
def built(color_data):
    model, proc = build_model(parse_recipe(tiled_recipe(color_data)).model, **make_parts())
    return model, proc


def test_recipe_tiling_reaches_the_processor(built):
    model, proc = built
    tiling = proc.media["image"].tiling
    assert (tiling.max_tiles, tiling.tile_size, tiling.global_view, tiling.markers) == (4, 32, True, "text")
    assert model.tokens_per_item("image") == 4  # per view: pool grid 2


def test_no_tiling_by_default(color_data):
    _, proc = build_model(parse_recipe(tiny_recipe_dict(color_data)).model, **make_parts())
    assert proc.media["image"].tiling is None


def test_each_view_scatters_its_own_features(built):
    model, proc = built
    batch = proc.collate([proc.encode(ask(i, im, "red")) for i, im in enumerate(images())])
    assert batch.media_counts["image"] == [5, 5, 5, 1]  # global + 2×2 tiles; the small image: global only
    pid = model.placeholder_ids["image"]
    features, _ = model.encode("image", batch.media["image"])
    assert features.shape[:2] == (16, 4)
    per_sample = (batch.input_ids == pid).sum(dim=1).tolist()
    assert per_sample == [n * features.shape[1] for n in batch.media_counts["image"]]
    # The embeddings at the placeholders are the features of the views, sample by sample, in text order.
    embeds = model.embed(batch.input_ids, batch.media, batch.media_counts)
    at_placeholders = embeds[batch.input_ids == pid]
    assert torch.allclose(at_placeholders, features.reshape(-1, features.shape[-1]))
    out = model(**batch.model_inputs())
    assert torch.isfinite(out.loss)


def test_a_tile_changes_only_its_own_sample(built):
    model, proc = built
    prompts = [proc.encode(ask(i, im), for_generation=True) for i, im in enumerate(images()[:2])]
    batch = proc.collate(prompts, padding_side="left")
    before = model(**batch.model_inputs()).logits
    media = {"image": batch.media["image"].clone()}
    media["image"][4] = torch.rand_like(media["image"][4])  # the last tile of sample 0
    after = model(**{**batch.model_inputs(), "media": media}).logits
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1], after[1])


def test_placeholder_count_check_still_guards_tiled_batches(built):
    model, proc = built
    batch = proc.collate([proc.encode(ask(0, images()[0], "red"))])
    counts = {"image": [4]}  # one view fewer than the text holds
    media = {"image": batch.media["image"][:4]}
    with pytest.raises(OmnifuseError, match="20 placeholder tokens but the connector produced 16"):
        model(**{**batch.model_inputs(), "media": media, "media_counts": counts})


def test_cached_and_uncached_generation_agree_with_tiles(built):
    model, proc = built
    engine = Engine(model, proc)
    prompts = [ask(i, im) for i, im in enumerate(images())]
    cfg = GenerationConfig(max_new_tokens=5)
    cached = engine.generate_ids(prompts, cfg, use_cache=True)
    assert cached == engine.generate_ids(prompts, cfg, use_cache=False)
    assert [engine.generate_ids([p], cfg)[0] for p in prompts] == cached
    assert any(cached)


def write_big_color_dataset(folder, n: int = 12):
    """64×64 two-colour images: with 32-px tiles each becomes a global view and 2×2 tiles."""
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        color, other = ((220, 30, 30), (30, 30, 220)) if i % 2 else ((30, 30, 220), (220, 30, 30))
        arr = np.zeros((64, 64, 3), dtype=np.uint8)
        arr[:], arr[32:, 32:] = color, other
        Image.fromarray(arr).save(folder / "img" / f"{i}.png")
        answer = "red" if i % 2 else "blue"
        lines.append(
            {
                "id": f"b{i}",
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": f"img/{i}.png"},
                                                 {"type": "text", "text": "what color is the shape?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
            }
        )  # fmt: skip
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_training_steps_with_tiles(tmp_path):
    data = write_big_color_dataset(tmp_path / "big")
    recipe = parse_recipe(tiled_recipe(data, markers="newline"), overrides=["stages.1.steps=2"])
    res = train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert res.steps == 4 + 2 and len(records) == 6
    assert all(math.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: r["model"].update(fusion={"type": "cross_attention", "heads": 4}),
            ["model.tiling.image", "cross-attention", "fusion: {type: early}"],
        ),
        (lambda r: r["model"]["encoders"]["image"].update(crop=True), ["crop: true", "set crop: false"]),
        (
            lambda r: r["model"]["encoders"].update(
                image={
                    "type": "multi",
                    "encoders": [
                        {"type": "mobilenet_v2", "weights": None, "crop": False},
                        {"type": "efficientnet_lite0", "weights": None},
                    ],
                }
            ),
            ["efficientnet_lite0 encoder centre-crops"],
        ),  # fmt: skip
        (lambda r: r["model"]["tiling"].update(audio={}), ["model.tiling.audio", "no audio encoder"]),
        (
            lambda r: r["model"]["tiling"]["image"].update(max_tiles=1),
            ["max_tiles", "greater than or equal to 2"],
        ),
        (lambda r: r["model"]["tiling"]["image"].update(markers="emoji"), ["'text' or 'newline'"]),
    ],
)
def test_bad_tiling_recipes_say_what_to_change(color_data, change, expected):
    raw = tiled_recipe(color_data)
    change(raw)
    with pytest.raises(OmnifuseError) as info:
        parse_recipe(raw, "bad.yaml")
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


class SizelessEncoder(nn.Module):
    """The encoder interface without ``image_size``."""

    output_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyVisionEncoder()

    def num_tokens(self) -> int:
        return self.inner.num_tokens()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.inner.preprocess(image)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner(pixels)


def test_tile_size_is_needed_when_the_encoder_declares_no_size(color_data):
    parts = {**make_parts(), "encoders": {"image": SizelessEncoder()}}
    spec = parse_recipe(tiled_recipe(color_data)).model
    with pytest.raises(OmnifuseError, match="tile_size is null.*SizelessEncoder.*give tile_size"):
        build_model(spec, **parts)
    spec = parse_recipe(tiled_recipe(color_data, tile_size=16)).model
    _, proc = build_model(spec, **{**make_parts(), "encoders": {"image": SizelessEncoder()}})
    assert proc.media["image"].tiling.tile_size == 16
