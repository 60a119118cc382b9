"""--format llava: a tiny CLIP tower → MLP → tiny Llama with LoRA, trained a few steps, exported, and
loaded by plain transformers in a fresh process that cannot import omnifuse. Its logits, its prompt ids
and its greedy answer must be omnifuse's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from badinput import write_llm_folder, write_yaml
from omnifuse.cli import main
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.encoders.vision.cnn import to_tensor
from omnifuse.encoders.vision.hf import from_config
from omnifuse.export.llava import image_processor
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import ModelSpec
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from tiny import write_color_dataset

QUESTION = "What color is the shape?"
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32)

# Runs without omnifuse: any import of it fails, so the folder must stand on transformers alone.
LOADER = textwrap.dedent(
    """
    import json, sys
    from importlib.abc import MetaPathFinder

    class NoOmnifuse(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "omnifuse":
                raise ImportError("this process must not import omnifuse")

    sys.meta_path.insert(0, NoOmnifuse())
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder, image, question, out = sys.argv[1:]
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image), text=prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        ids = model.generate(**inputs, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    n = inputs["input_ids"].shape[1]
    save_file({"logits": logits.contiguous(), "pixel_values": inputs["pixel_values"].contiguous()}, out + ".safetensors")
    json.dump({"input_ids": inputs["input_ids"][0].tolist(), "answer": ids[0, n:].tolist(),
               "image_token_id": model.config.image_token_id,
               "stop": model.generation_config.eos_token_id}, open(out + ".json", "w"))
    """
)


def llava_recipe(tower, llm, data, layer: int, drop_cls: bool, connector: str) -> dict:
    return {
        "name": "tiny-llava",
        "seed": 0,
        "model": {
            "encoders": {"image": {"type": "hf", "name": str(tower), "layer": layer, "drop_cls": drop_cls}},
            "connectors": {"image": {"type": connector}},
            "llm": {"name": str(llm), "system_prompt": "Answer briefly."},
        },
        "data": {"train": str(data), "eval": str(data)},
        "stages": [
            {"name": "instruct", "trainable": {"connectors": "full", "llm": "lora"},
             "lr": {"connectors": 1e-2, "llm": 5e-2}, "steps": 3, "batch_size": 2, "save_every": 3},
        ],
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    }  # fmt: skip


def write_tower(folder):
    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(**TOWER, patch_size=8)).save_pretrained(folder)
    processor = {"size": {"height": 32, "width": 32}, "do_center_crop": False, "resample": 3,
                 "image_mean": [0.48, 0.46, 0.41], "image_std": [0.27, 0.26, 0.28]}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava-parts")
    image = root / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    return (
        write_tower(root / "tower"),
        write_llm_folder(root / "llm"),
        write_color_dataset(root / "data", 4),
        image,
    )


def trained_and_exported(parts, tmp_path, **variant):
    tower, llm, data, _ = parts
    recipe = write_yaml(tmp_path / "recipe.yaml", llava_recipe(tower, llm, data, **variant))
    run, out = tmp_path / "run", tmp_path / "llava"
    assert main(["train", str(recipe), "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(out), "--format", "llava", "--no-progress"]) == 0
    return run, out


def load_without_omnifuse(folder, image, tmp_path) -> tuple[dict, dict]:
    script, out = tmp_path / "load.py", tmp_path / "plain"
    script.write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(image), QUESTION, str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(f"{out}.safetensors"), json.loads(out.with_suffix(".json").read_text())


def omnifuse_side(model, processor, image) -> tuple[list[int], torch.Tensor, torch.Tensor, list[int], int]:
    sample = Sample("q", (Message("user", (ImagePart(image=Image.open(image)), TextPart(QUESTION))),))
    batch = processor.collate([processor.encode(sample, for_generation=True)], padding_side="left")
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask, batch.media, batch.media_counts).logits
    answer = Engine(model, processor).generate_ids([sample], GenerationConfig(max_new_tokens=16))[0]
    ids = batch.input_ids[0].tolist()
    return ids, logits, batch.media["image"], answer, model.placeholder_ids["image"]


@pytest.mark.parametrize(
    "variant",
    [
        {"layer": -2, "drop_cls": True, "connector": "mlp"},  # LLaVA-1.5's choices
        {"layer": -1, "drop_cls": False, "connector": "linear"},  # LLaVA-1's projector, CLS kept
    ],
    ids=["mlp-default", "linear-full"],
)
def test_plain_transformers_answers_like_omnifuse(parts, tmp_path, variant):
    run, folder = trained_and_exported(parts, tmp_path, **variant)
    unmerged = ["export", str(run), "--out", str(tmp_path / "x"), "--format", "llava", "--no-merge-lora"]
    assert main(unmerged) == 2 and not (tmp_path / "x").exists()
    small = ["export", str(run), "--out", str(tmp_path / "bf16"), "--format", "llava", "--dtype", "bfloat16",
             "--max-shard-size", "40KB", "--no-progress"]  # fmt: skip
    assert main(small) == 0
    index = json.loads((tmp_path / "bf16" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert {t.dtype for s in shards for t in load_file(tmp_path / "bf16" / s).values()} == {torch.bfloat16}
    plain, meta = load_without_omnifuse(folder, parts[3], tmp_path)
    _, model, processor = load_model(RunDir(run), progress=False)
    ids, logits, pixels, answer, placeholder = omnifuse_side(model, processor, parts[3])
    image_id = meta["image_token_id"]
    assert meta["input_ids"] == [image_id if t == placeholder else t for t in ids]
    torch.testing.assert_close(plain["pixel_values"], pixels, atol=1e-5, rtol=0)
    vocab = logits.shape[-1]
    assert (plain["logits"][..., :vocab] - logits).abs().max() <= 1e-4
    stops = meta["stop"] if isinstance(meta["stop"], list) else [meta["stop"]]
    theirs = meta["answer"]
    for i, tok in enumerate(theirs):
        if tok in stops:
            theirs = theirs[:i]
            break
    assert theirs == answer and len(answer) > 0
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_feature_layer"] == variant["layer"]
    expected_strategy = "default" if variant["drop_cls"] else "full"
    assert config["vision_feature_select_strategy"] == expected_strategy
    assert config["image_seq_length"] == (16 if variant["drop_cls"] else 17)
    assert not any("lora" in k for k in load_file(folder / "model.safetensors"))

    # and back: model.init_from the exported folder is the trained model again (its placeholder id and
    # vocabulary differ by the added <image> row)
    back_model, back_processor = build_model(ModelSpec(init_from=str(folder)), progress=False)
    back_ids, back_logits, _, back_answer, back_placeholder = omnifuse_side(
        back_model.eval(), back_processor, parts[3]
    )
    assert [placeholder if t == back_placeholder else t for t in back_ids] == ids
    assert (back_logits[..., :vocab] - logits).abs().max() <= 1e-4
    assert back_answer == answer


@pytest.mark.parametrize("shorter", [None, 36], ids=["resize", "resize-and-crop"])
def test_the_exported_image_processor_preprocesses_like_omnifuse(shorter):
    """Resize-only: identical. With a centre crop, a half-pixel offset is rounded (as torchvision's
    CenterCrop, which CLIP's own preprocessing uses) by omnifuse and floored by transformers' PIL
    processor: then the two crops are one pixel apart, and equal once shifted."""
    encoder = from_config(CLIPVisionConfig(**TOWER, patch_size=8), image_size=32, resize_shorter=shorter,
                          mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))  # fmt: skip
    processor = image_processor(encoder)
    rng = np.random.default_rng(0)
    shifted = 0
    for h, w in [(48, 40), (40, 48), (37, 50), (64, 64), (100, 57), (36, 36), (51, 36)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        ours = encoder.preprocess(image)
        if (theirs - ours).abs().max() <= 1e-5:
            continue
        assert shorter is not None, f"{w}x{h}: resize-only preprocessing differs"
        nw, nh = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
        left, top = (nw - 32) / 2, (nh - 32) / 2
        assert max(left % 1, top % 1) == 0.5, f"{w}x{h}: differs without a half-pixel crop offset"
        resized = image.resize((nw, nh), encoder.resample)
        floored = resized.crop((int(left), int(top), int(left) + 32, int(top) + 32))
        assert (theirs - to_tensor(floored, encoder.mean, encoder.std)).abs().max() <= 1e-5
        shifted += 1
    assert shifted == (0 if shorter is None else 4)  # 3 of the 7 shapes have whole-pixel offsets
