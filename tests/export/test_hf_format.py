"""--format hf: four kinds of recipe (CNN → MLP, Q-Former, Perceiver + gated cross-attention, image +
Whisper audio embeddings), each trained a few steps, exported, and loaded through transformers'
``AutoModelForImageTextToText`` / ``AutoProcessor`` after ``import omnifuse.hf`` — with the parts' own
folders moved away, so everything must come from the exported folder. Its prompt ids, logits (≤ 1e-4)
and 16 greedy tokens must be omnifuse's, and its answer the one ``omnifuse chat`` gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

import omnifuse.hf  # noqa: F401  (registers omnifuse's classes with the Auto classes)
from badinput import recipe_dict, write_llm_folder, write_whisper_folder, write_yaml
from export.conftest import cnn_recipe
from omnifuse.cli import main
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.generation.chat import ChatSession
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.hf import OmnifuseForConditionalGeneration, OmnifuseProcessor
from omnifuse.processing.processor import load_clip
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from tiny import write_color_dataset, write_spoken_dataset, write_tiny_bert

QUESTION = "what color is the shape?"


def _qformer(recipe: dict, bert) -> dict:
    recipe["model"]["connectors"]["image"] = {
        "type": "qformer", "text_model": str(bert), "num_queries": 4, "embed_dim": 16, "max_text_len": 16,
    }  # fmt: skip
    return recipe


def _flamingo(recipe: dict) -> dict:
    recipe["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 4, "depth": 1, "heads": 2}
    recipe["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 2}
    recipe["stages"][0]["trainable"] = {"connectors": "full", "fusion": "full"}
    recipe["stages"][0]["lr"] = {"connectors": 1e-2, "fusion": 1e-1}
    return recipe


def _multi(recipe: dict, tower) -> dict:
    """Prismatic-style: a CLIP tower (its own preprocessing, tiled in 2×2 views) and a CNN, by channel."""
    recipe["model"]["encoders"]["image"] = {
        "type": "multi", "combine": "channel",
        "encoders": [{"type": "hf", "name": str(tower), "layer": -2, "drop_cls": True},
                     {"type": "mobilenet_v2", "weights": None, "image_size": 32, "crop": False}],
    }  # fmt: skip
    recipe["model"]["tiling"] = {"image": {"max_tiles": 4, "tile_size": 32}}
    return recipe


def write_asr_folder(folder):
    """A tiny random Whisper (with tokenizer and generation settings) that Transcriber.load reads."""
    from omnifuse.assets import whisper
    from tiny_whisper import write_tiny_ct2

    _, parts, tokenizer, config = write_tiny_ct2(folder.parent / "ct2")
    folder.mkdir()
    whisper.write_hf_whisper(parts, tokenizer, config, folder)
    return folder


def write_recipe(kind: str, root) -> tuple:
    """(recipe file, the folders of its pretrained parts, an image, a clip or None)."""
    llm = write_llm_folder(root / "llm")
    if kind == "audio":
        whisper = write_whisper_folder(root / "whisper")
        data = write_spoken_dataset(root / "data", n=6)
        recipe = recipe_dict(llm, whisper, data)
        recipe["stages"][0]["steps"] = 3
        return (
            write_yaml(root / "recipe.yaml", recipe),
            [llm, whisper],
            data.parent / "img" / "1.png",
            (data.parent / "audio" / "1.wav"),
        )
    if kind == "cascade":
        asr = write_asr_folder(root / "asr")
        data = write_spoken_dataset(root / "data", n=6)
        recipe = cnn_recipe(llm, data)
        recipe["model"]["asr"] = {"name": str(asr), "batch_size": 4}
        clip = data.parent / "audio" / "1.wav"
        return write_yaml(root / "recipe.yaml", recipe), [llm, asr], data.parent / "img" / "1.png", clip
    data = write_color_dataset(root / "data", n=6)
    recipe, folders = cnn_recipe(llm, data), [llm]
    if kind == "llava-init":  # model.init_from: a LLaVA checkpoint (CLIP tower, untied head) as the start
        from export.test_init_from import write_llava

        write_llava(root / "llava", tied=False)
        recipe["model"] = {"init_from": str(root / "llava"), "llm": {"system_prompt": ""}}
        folders = [llm, root / "llava"]
    if kind == "qformer":
        bert = write_tiny_bert(root / "bert")
        recipe, folders = _qformer(recipe, bert), [llm, bert]
    elif kind == "flamingo":
        recipe = _flamingo(recipe)
    elif kind == "multi":
        from export.test_llava_format import write_tower

        tower = write_tower(root / "tower")
        recipe, folders = _multi(recipe, tower), [llm, tower]
        big = root / "big.png"  # larger than one tile: a global view and tiles
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(big)
        return write_yaml(root / "recipe.yaml", recipe), folders, big, None
    return write_yaml(root / "recipe.yaml", recipe), folders, data.parent / "img" / "1.png", None


def sample_of(image, clip) -> Sample:
    parts = [ImagePart(image=Image.open(image).convert("RGB"))]
    if clip is not None:
        parts.append(AudioPart(waveform=load_clip(clip, "test")))
    else:
        parts.append(TextPart(QUESTION))
    return Sample("q", (Message("user", tuple(parts)), Message("assistant", (TextPart(""),))))


def omnifuse_side(run, image, clip) -> dict:
    recipe, model, processor = load_model(RunDir(run), progress=False)
    sample = sample_of(image, clip)
    batch = processor.collate([processor.encode(sample, for_generation=True)], padding_side="left")
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask, batch.media, batch.media_counts,
                       media_lengths=batch.media_lengths).logits  # fmt: skip
    answer = Engine(model, processor).generate_ids([sample], GenerationConfig(max_new_tokens=16))[0]
    chat = ChatSession(model, processor, recipe, max_new_tokens=16)
    chat.set_image(image)
    said = chat.ask(None if clip is not None else QUESTION, audio=clip)
    return {"ids": batch.input_ids[0].tolist(), "logits": logits, "answer": answer, "chat": said}


def hf_side(folder, image, clip) -> dict:
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=Image.open(image), text=None if clip is not None else QUESTION, audio=clip)
    with torch.no_grad():
        logits = model(**inputs).logits
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    n = inputs["input_ids"].shape[1]
    answer = out[0, n:].tolist()
    text = processor.decode(out[0, n:], skip_special_tokens=True).strip()
    return {"ids": inputs["input_ids"][0].tolist(), "logits": logits, "answer": answer, "chat": text,
            "type": type(model).__name__, "views": inputs["pixel_values"].shape[0]}  # fmt: skip


@pytest.mark.parametrize("kind", ["cnn", "qformer", "flamingo", "audio", "multi", "cascade", "llava-init"])
def test_hf_folder_answers_like_omnifuse(kind, tmp_path):
    recipe, folders, image, clip = write_recipe(kind, tmp_path / "parts")
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["train", str(recipe), "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(out), "--no-progress"]) == 0  # hf is the default
    ours = omnifuse_side(run, image, clip)
    for folder in folders:  # the export must not need the parts it was built from
        folder.rename(folder.with_name(folder.name + "-gone"))
    theirs = hf_side(out, image, clip)
    assert theirs["type"] == "OmnifuseForConditionalGeneration"
    assert theirs["views"] == (5 if kind == "multi" else 1)  # tiling: the global view and 2×2 tiles
    assert theirs["ids"] == ours["ids"]
    diff = float((theirs["logits"] - ours["logits"]).abs().max())
    assert diff <= 1e-4, diff
    print(f"{kind}: max |logit difference| {diff:.2e}, answer {len(ours['answer'])} tokens")
    assert theirs["answer"][: len(ours["answer"])] == ours["answer"]
    assert all(t == theirs["answer"][-1] for t in theirs["answer"][len(ours["answer"]) :])  # pad after
    assert theirs["chat"] == ours["chat"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "omnifuse" and not (out / "pytorch_model.bin").exists()
    stored = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in stored)
    assert any(k.startswith("encoders.image.") for k in stored)  # frozen parts are in the folder too
    assert (out / "asr" / "model.safetensors").is_file() == (kind == "cascade")


# ---------------------------------------------------------------------------- the folder as a contract
@pytest.fixture(scope="module")
def exported(cnn_run, tmp_path_factory):
    """The tiny CNN run exported twice: one safetensors file, and bfloat16 shards of at most 40KB."""
    run, image = cnn_run
    root = tmp_path_factory.mktemp("hf-export")
    assert main(["export", str(run), "--out", str(root / "one"), "--no-progress"]) == 0
    small = ["--dtype", "bfloat16", "--max-shard-size", "40KB", "--no-progress"]
    assert main(["export", str(run), "--out", str(root / "shards"), "--format", "hf", *small]) == 0
    return run, image, root


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / folder.name)


def test_sharded_bfloat16_folder_loads(exported):
    run, image, root = exported
    folder = root / "shards"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    stored = {k: t for s in shards for k, t in load_file(folder / s).items()}
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.bfloat16}
    assert any("running_mean" in k for k in stored)  # batch-norm statistics travel too
    model = AutoModelForImageTextToText.from_pretrained(folder)
    full = AutoModelForImageTextToText.from_pretrained(root / "one")
    inputs = AutoProcessor.from_pretrained(folder)(images=image, text=QUESTION)
    with torch.no_grad():
        diff = (model(**inputs).logits - full(**inputs).logits).abs().max()
    assert diff < 0.5  # weights rounded to bfloat16, computed in float32


def test_corrupted_shard_is_one_paragraph(exported, tmp_path):
    folder = _copy(exported[2] / "shards", tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(OmnifuseError) as err:
        AutoModelForImageTextToText.from_pretrained(folder)
    message = str(err.value)
    assert f"weights shard {shard} is not a readable safetensors file" in message
    assert "export it again" in message and "\n" not in message


def test_unknown_and_missing_names_are_listed(exported, tmp_path):
    folder = _copy(exported[2] / "one", tmp_path)
    state = load_file(folder / "model.safetensors")
    gone = "connectors.image.net.0.weight" if "connectors.image.net.0.weight" in state else sorted(state)[0]
    state["encoders.image.extra"] = state.pop(gone)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(OmnifuseError) as err:
        AutoModelForImageTextToText.from_pretrained(folder)
    message = str(err.value)
    assert f"1 missing ({gone})" in message and "1 unknown (encoders.image.extra)" in message


def test_pickles_are_never_loaded(exported, tmp_path):
    folder = _copy(exported[2] / "one", tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(OmnifuseError, match="pytorch_model.bin: pickles are never loaded"):
        AutoModelForImageTextToText.from_pretrained(folder)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(OmnifuseError, match="is not an exported omnifuse folder"):
        OmnifuseForConditionalGeneration.from_pretrained(tmp_path)


def test_generate_refuses_settings_it_does_not_take(exported):
    _, image, root = exported
    model = AutoModelForImageTextToText.from_pretrained(root / "one")
    inputs = AutoProcessor.from_pretrained(root / "one")(images=image, text=QUESTION)
    with pytest.raises(OmnifuseError, match="num_beams not supported"):
        model.generate(**inputs, num_beams=4)
    with pytest.raises(OmnifuseError, match="unknown input"):
        model(**inputs, audio_values=torch.zeros(1, 80, 10))


def test_untied_head_round_trips_through_save_pretrained(tmp_path):
    """The library path (no run directory): a built model wrapped, saved and loaded back, with an LLM
    whose output head is not tied to its embeddings (both matrices stored)."""
    from omnifuse.hf.modeling import wrap
    from omnifuse.hf.processing import settings
    from omnifuse.models.builders import build_model
    from omnifuse.recipe import ModelSpec
    from tiny import CHATML, make_llm, make_tokenizer

    tokenizer = make_tokenizer(CHATML)
    llm = make_llm(len(tokenizer))
    llm.config.tie_word_embeddings = False
    llm.lm_head.weight = torch.nn.Parameter(llm.lm_head.weight.detach().clone() + 0.01)
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    data = write_color_dataset(tmp_path / "data", n=1)
    spec = ModelSpec.model_validate(cnn_recipe(tmp_path / "llm", data)["model"])
    model, processor = build_model(spec, progress=False)
    wrap(spec, model.eval(), processor).save_pretrained(tmp_path / "hf")
    OmnifuseProcessor(processor, settings(model, processor)).save_pretrained(tmp_path / "hf")
    assert {"llm.lm_head.weight", "llm.model.embed_tokens.weight"} <= set(
        load_file(tmp_path / "hf" / "model.safetensors")
    )
    back = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf", device_map="auto")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "hf")) is type(back)  # the other Auto class
    inputs = AutoProcessor.from_pretrained(tmp_path / "hf")(
        images=Image.open(data.parent / "img" / "0.png"), text=QUESTION
    )
    batch = processor.collate(
        [processor.encode(sample_of(data.parent / "img" / "0.png", None), for_generation=True)],
        padding_side="left",
    )
    with torch.no_grad():
        expected = model(batch.input_ids, batch.attention_mask, batch.media, batch.media_counts).logits
        assert torch.equal(back(**inputs).logits, expected)


def test_sampled_recipe_answers_like_omnifuse_chat(tmp_path):
    """A recipe that samples (temperature, top_p, its seed): the folder's generation config carries
    them, so generate() with no settings samples the answer ``omnifuse chat`` gives."""
    root = tmp_path / "parts"
    data = write_color_dataset(root / "data", n=6)
    recipe = cnn_recipe(write_llm_folder(root / "llm"), data)
    recipe["seed"] = 7
    recipe["generation"] = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 0.95}
    run, out = tmp_path / "run", tmp_path / "hf"
    assert (
        main(["train", str(write_yaml(root / "recipe.yaml", recipe)), "--out", str(run), "--no-progress"])
        == 0
    )
    assert main(["export", str(run), "--out", str(out), "--no-progress"]) == 0
    image = data.parent / "img" / "2.png"
    loaded, ours, processor = load_model(RunDir(run), progress=False)
    chat = ChatSession(ours, processor, loaded)  # the recipe's length and sampling, as `omnifuse chat`
    chat.set_image(image)
    said = chat.ask(QUESTION)
    model = AutoModelForImageTextToText.from_pretrained(out)
    inputs = AutoProcessor.from_pretrained(out)(images=Image.open(image), text=QUESTION)
    answer = model.generate(**inputs)[0, inputs["input_ids"].shape[1] :]
    assert model.generation_config.seed == 7 and model.generation_config.do_sample
    assert model.processor.tokenizer.decode(answer, skip_special_tokens=True).strip() == said
    greedy = model.generate(**inputs, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert greedy.tolist() != answer.tolist()  # it did sample


def test_a_batch_answers_as_its_rows_alone(exported):
    """Prompts of different lengths, left-padded into one batch: each row's answer is its answer alone."""
    run, _, root = exported
    model = AutoModelForImageTextToText.from_pretrained(root / "one")
    processor = AutoProcessor.from_pretrained(root / "one")
    images = [Image.open(run.parent / "colors" / "img" / f"{i}.png") for i in (0, 1)]
    texts = [QUESTION, "is there a red circle in the image? answer yes or no"]
    batch = processor(images=images, text=texts)
    assert batch["image_counts"].tolist() == [1, 1] and (batch["attention_mask"] == 0).any()
    together = model.generate(**batch, max_new_tokens=6)[:, batch["input_ids"].shape[1] :]
    for i in range(2):
        alone = processor(images=images[i], text=texts[i])
        answer = model.generate(**alone, max_new_tokens=6)[0, alone["input_ids"].shape[1] :].tolist()
        assert together[i, : len(answer)].tolist() == answer


def test_video_recipes_are_refused_until_the_format_holds_them(tmp_path):
    from omnifuse.export.common import ExportOptions
    from omnifuse.export.hf import HFFormat
    from omnifuse.recipe import parse_recipe

    recipe = cnn_recipe(tmp_path / "llm", write_color_dataset(tmp_path / "data", n=1))
    frames = {
        "type": "frames",
        "image": {"type": "mobilenet_v2", "weights": None, "image_size": 32, "crop": False},
    }
    recipe["model"]["encoders"] = {"video": frames}
    recipe["model"]["connectors"] = {"video": {"type": "frame_pool"}}
    with pytest.raises(OmnifuseError, match=r"does not hold video encoders yet \(encoders.video: frames\)"):
        HFFormat().check(parse_recipe(recipe), ExportOptions())
