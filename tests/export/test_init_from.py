"""model.init_from: a LLaVA-format folder (a tiny random LlavaForConditionalGeneration saved here, or
omnifuse's own llava export) becomes an omnifuse model with the same logits, which then trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from badinput import write_yaml
from omnifuse.cli import main
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_model
from omnifuse.recipe import ModelSpec
from tiny import CHATML, make_tokenizer, write_color_dataset

TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
             patch_size=8)  # fmt: skip
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256)  # fmt: skip


def write_llava(folder, tied: bool, layer: int = -2, strategy: str = "default"):
    """A tiny random LLaVA checkpoint, saved the way llava-hf ones are (model, tokenizer, processor)."""
    tokenizer = make_tokenizer(CHATML)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**TOWER).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=tied, **TEXT).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_seq_length=16 if strategy == "default" else 17,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # a random init leaves the projector biases at zero: make every weight count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder, max_shard_size="100KB")  # several shards and an index
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor, tokenizer, patch_size=8, vision_feature_select_strategy=strategy,
                   num_additional_image_tokens=1).save_pretrained(folder)  # fmt: skip
    return model


def sample(image) -> Sample:
    return Sample("q", (Message("user", (ImagePart(image=image), TextPart("What color is it?"))),))


def omnifuse_logits(model, processor, image):
    batch = processor.collate([processor.encode(sample(image), for_generation=True)])
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask, batch.media, batch.media_counts).logits
    return batch, out


@pytest.fixture
def image():
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_a_llava_checkpoint_starts_an_omnifuse_model_with_its_logits(tmp_path, image, tied):
    llava = write_llava(tmp_path / "llava", tied)
    assert (tmp_path / "llava" / "model.safetensors.index.json").is_file()
    model, processor = build_model(ModelSpec(init_from=str(tmp_path / "llava")), progress=False)
    model.eval()
    batch, ours = omnifuse_logits(model, processor, image)
    ids = batch.input_ids.clone()
    ids[ids == model.placeholder_ids["image"]] = llava.config.image_token_id
    with torch.no_grad():
        theirs = llava(
            input_ids=ids, pixel_values=batch.media["image"], attention_mask=batch.attention_mask
        ).logits
    assert (theirs - ours).abs().max() <= 1e-4
    assert ours.abs().max() > 1e-2  # not a vacuous comparison of zeros


def test_init_from_trains_and_reloads(tmp_path):
    write_llava(tmp_path / "llava", tied=True)
    data = write_color_dataset(tmp_path / "data", n=4)
    recipe = {
        "name": "from-llava",
        "model": {"init_from": str(tmp_path / "llava"), "llm": {"system_prompt": ""}},
        "data": {"train": str(data), "eval": str(data)},
        "stages": [{"name": "s", "trainable": {"connectors": "full", "llm": "lora"}, "steps": 2, "batch_size": 2,
                    "lr": {"connectors": 1e-2, "llm": 1e-2}}],
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    }  # fmt: skip
    path = write_yaml(tmp_path / "recipe.yaml", recipe)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["chat", str(tmp_path / "run"), "--image", str(data.parent / "img" / "0.png"), "what?"]) == 0


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def _validate(tmp_path, model: dict) -> int:
    data = write_color_dataset(tmp_path / "data", n=2)
    recipe = {"name": "x", "model": model, "data": {"train": str(data)},
              "stages": [{"name": "s", "trainable": {"connectors": "full"}, "lr": {"connectors": 1e-3}, "steps": 1}]}  # fmt: skip
    return main(["train", str(write_yaml(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run"),
                 "--no-progress"])  # fmt: skip


def test_a_folder_without_config_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _validate(tmp_path, {"init_from": str(tmp_path / "empty")}) == 2
    assert "has no config.json; give the folder of a LLaVA-format checkpoint" in _err(capsys)


def test_a_non_llava_folder_is_refused(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    assert _validate(tmp_path, {"init_from": str(tmp_path / "clip")}) == 2
    assert "holds a clip_vision_model model, not LLaVA" in _err(capsys)


def test_parts_beside_init_from_are_refused(tmp_path, capsys):
    write_llava(tmp_path / "llava", tied=True)
    model = {"init_from": str(tmp_path / "llava"), "encoders": {"image": {"type": "mobilenet_v2"}}}
    assert _validate(tmp_path, model) == 2
    assert "remove model.encoders" in _err(capsys)


def test_a_corrupted_shard_is_one_paragraph(tmp_path, capsys):
    write_llava(tmp_path / "llava", tied=True)
    shard = sorted((tmp_path / "llava").glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert _validate(tmp_path, {"init_from": str(tmp_path / "llava")}) == 2
    err = _err(capsys)
    assert shard.name in err and "safetensors" in err


def test_a_missing_shard_is_named(tmp_path):
    write_llava(tmp_path / "llava", tied=True)
    index = json.loads((tmp_path / "llava" / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00099.safetensors"
    (tmp_path / "llava" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(OmnifuseError, match="No such file or directory: .*model-00001-of-00099.safetensors"):
        build_model(ModelSpec(init_from=str(tmp_path / "llava")), progress=False)


def test_weights_that_do_not_fill_the_model_are_listed(tmp_path):
    """A shard with one weight missing and one of another model: both named, nothing loads."""
    write_llava(tmp_path / "llava", tied=True)
    folder = tmp_path / "llava"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    tensors.pop(dropped)
    tensors["vision_tower.extra.weight"] = torch.zeros(2)
    save_file(tensors, shard, {"format": "pt"})
    index["weight_map"].pop(dropped)
    index["weight_map"]["vision_tower.extra.weight"] = shard.name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        OmnifuseError, match=r"\d missing \(.*embed_tokens.*\) and 1 unknown \(.*extra.weight\)"
    ):
        build_model(ModelSpec(init_from=str(folder)), progress=False)
