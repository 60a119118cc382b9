"""The frozen-feature cache of the generative path (runtime.feature_cache): equal training, keys, damage, bypass."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from omnifuse.data.jsonl import load_jsonl
from omnifuse.models.builders import build_model
from omnifuse.models.feature_cache import FeatureCache, attach_feature_cache
from omnifuse.models.stages import add_lora
from omnifuse.recipe import LoRASpec, parse_recipe
from omnifuse.training.loop import train
from tiny import TinyVisionEncoder, make_parts, tiny_recipe_dict


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _shards(folder) -> list:
    return sorted(folder.glob("*/shard-*.safetensors"))


def test_cached_training_equals_uncached(tmp_path, color_data):
    runs = {}
    for setting in ("auto", "off"):
        recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=[f"runtime.feature_cache={setting}"])
        out = io.StringIO()
        train(
            recipe,
            tmp_path / setting,
            parts=make_parts(),
            progress=False,
            console=Console(file=out, width=200),
        )
        runs[setting] = (_losses(tmp_path / setting), out.getvalue())
    (cached, log), (plain, plain_log) = runs["auto"], runs["off"]
    assert len(cached) == len(plain) == 8
    assert max(abs(a - b) for a, b in zip(cached, plain, strict=True)) <= 1e-6
    # The cache was really used: 24 images of 3 distinct contents → 3 encoded, the rest read back, size reported.
    assert "3 item(s) encoded and stored" in log and "MB in" in log, log
    # A finished run's cache is removed (its training images' features serve nothing after training).
    assert "removed: the run is finished" in log and not (tmp_path / "auto" / "feature_cache").exists()
    assert "feature cache" not in plain_log and not (tmp_path / "off" / "feature_cache").exists()


def _pixels(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_changed_weights_or_image_size_miss_the_cache(tmp_path):
    torch.manual_seed(0)
    encoder, pixels, keys = TinyVisionEncoder().eval(), _pixels(), ["a", "b", "c", "d"]
    cache = FeatureCache(tmp_path, {"image": {"type": "tiny", "image_size": 32}})
    first = cache.encode("image", encoder, pixels, keys)
    assert cache.built == 4 and torch.equal(cache.encode("image", encoder, pixels, keys), first)
    assert cache.reused == 4 and cache.built == 4
    # Other weights, changed by an optimizer-style in-place update or behind autograd's back (.data): a miss.
    with torch.no_grad():
        encoder.net[0].weight.add_(0.5)
    second = cache.encode("image", encoder, pixels, keys)
    assert cache.built == 8 and torch.equal(second, encoder(pixels)) and not torch.allclose(second, first)
    encoder.net[2].bias.data.add_(1.0)
    assert torch.equal(cache.encode("image", encoder, pixels, keys), encoder(pixels)) and cache.built == 12
    # Another image size in the preprocessing config: a miss, in a new space.
    other = FeatureCache(tmp_path, {"image": {"type": "tiny", "image_size": 64}})
    other.encode("image", encoder, pixels, keys)
    assert other.built == 4 and other.reused == 0
    # Preprocessed inputs of another shape (the same config): a miss too.
    big = TinyVisionEncoder(image_size=64).eval()
    big.load_state_dict(encoder.state_dict())
    again = FeatureCache(tmp_path, {"image": {"type": "tiny", "image_size": 32}})
    assert torch.equal(again.encode("image", big, _pixels(size=64), keys), big(_pixels(size=64)))
    assert again.built == 4 and again.reused == 0
    assert len({p.parent for p in _shards(tmp_path)}) == 5  # five spaces, one per (weights, config, shape)


@pytest.mark.parametrize("damage", ["data", "header", "truncated"])
def test_damaged_shard_is_detected_and_rebuilt(tmp_path, damage):
    torch.manual_seed(0)
    encoder, pixels, keys = TinyVisionEncoder().eval(), _pixels(), ["a", "b", "c", "d"]
    FeatureCache(tmp_path, {}).encode("image", encoder, pixels, keys)
    (shard,) = _shards(tmp_path)
    raw = bytearray(shard.read_bytes())
    if damage == "data":
        raw[-3] ^= 0xFF  # one byte of the last tensor: the header still reads, the checksum does not match
    elif damage == "header":
        raw[8:20] = b"\x00" * 12
    else:
        raw = raw[: len(raw) // 2]
    shard.write_bytes(bytes(raw))
    messages: list[str] = []
    cache = FeatureCache(tmp_path, {}, log=messages.append)
    out = cache.encode("image", encoder, pixels, keys)
    assert torch.equal(out, encoder(pixels))  # never the damaged values
    assert cache.damaged == 1 and cache.built == 4 and cache.reused == 0
    assert len(messages) == 1 and "damaged" in messages[0] and str(shard) in messages[0]
    assert not shard.exists() and len(_shards(tmp_path)) == 1  # rebuilt in a new shard
    fresh = FeatureCache(tmp_path, {})
    assert torch.equal(fresh.encode("image", encoder, pixels, keys), out) and fresh.reused == 4


class _LinearEncoder(TinyVisionEncoder):
    """The tiny CNN with a linear layer after it, so that LoRA has a target."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(self.output_dim, self.output_dim)

    def forward(self, pixel_values):
        return self.q_proj(super().forward(pixel_values))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_cache_is_not_used_while_the_encoder_trains(tmp_path, tiny_parts, color_data, mode):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    tiny_parts["encoders"] = {"image": _LinearEncoder().eval()}
    model, processor = build_model(recipe.model, **tiny_parts)
    cache = attach_feature_cache(model, processor, "auto", tmp_path, recipe.model.encoders)
    encoder = model.encoders["image"]
    pixels, keys = _pixels(), ["a", "b", "c", "d"]
    if mode == "lora":
        add_lora(encoder, LoRASpec(r=2, target_modules=("q_proj",)), "encoders")
        for name, p in encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        encoder.requires_grad_(True)
    features, _ = model.encode("image", pixels, keys=keys)
    features.sum().backward()
    assert cache.built == 0 and cache.reused == 0 and not _shards(tmp_path)
    assert any(p.grad is not None for p in encoder.parameters())  # the encoder got its gradient
    # Frozen again (a later stage): the cache is used, in a space of the weights as trained.
    encoder.requires_grad_(False)
    model.encode("image", pixels, keys=keys)
    assert cache.built == 4


def test_off_detaches_and_several_processes_turn_it_off(tmp_path, tiny_parts, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    model, processor = build_model(recipe.model, **tiny_parts)
    assert attach_feature_cache(model, processor, "auto", tmp_path, recipe.model.encoders) is not None
    assert model.feature_cache is not None and processor.content_keys
    assert attach_feature_cache(model, processor, "off", tmp_path, recipe.model.encoders) is None
    assert model.feature_cache is None and not processor.content_keys
    notes: list[str] = []
    assert (
        attach_feature_cache(model, processor, "auto", tmp_path, recipe.model.encoders, 2, notes.append)
        is None
    )
    assert model.feature_cache is None and "2 processes" in notes[0]


def test_yaml_off_and_on_are_read_as_off_and_auto(color_data):
    raw = tiny_recipe_dict(color_data)
    for value, expected in ((False, "off"), (True, "auto"), ("off", "off"), ("auto", "auto")):
        raw["runtime"]["feature_cache"] = value
        assert parse_recipe(raw).runtime.feature_cache == expected


def test_processor_keys_are_content_hashes(tiny_parts, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    model, processor = build_model(recipe.model, **tiny_parts)
    samples = load_jsonl(color_data)[:4]  # blue, green, red, blue: files 0 and 3 differ, their pixels do not
    assert processor.collate([processor.encode(s) for s in samples]).media_keys == {}  # off: nothing hashed
    processor.content_keys = True
    keys = processor.collate([processor.encode(s) for s in samples]).media_keys["image"]
    assert len(keys) == 4 and keys[0] == keys[3] and len(set(keys)) == 3


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_cached_forward_equals_uncached_for_both_fusions(tmp_path, tiny_parts, color_data, fusion):
    raw = tiny_recipe_dict(color_data)
    if fusion == "cross_attention":
        raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    recipe = parse_recipe(raw)
    model, processor = build_model(recipe.model, **tiny_parts)
    model.eval().encoders.requires_grad_(False)  # frozen, as a stage that does not train it leaves it
    samples = load_jsonl(color_data)[:6]
    plain = model(**processor.collate([processor.encode(s) for s in samples]).model_inputs()).loss
    cache = attach_feature_cache(model, processor, "auto", tmp_path, recipe.model.encoders)
    for _ in range(2):  # building, then reading back
        batch = processor.collate([processor.encode(s) for s in samples])
        assert torch.equal(model(**batch.model_inputs()).loss, plain)
    assert cache.built == 3 and cache.reused == 6
