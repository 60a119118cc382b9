"""The real packaged models end to end: train a few steps, evaluate, chat, through the CLI.

Marked integration: these load SmolLM2-135M and MobileNetV2 from the asset cache (converted once).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from omnifuse.audio.tts import espeak_available
from omnifuse.cli import main
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sources import resolve_data_path
from omnifuse.llm import load_llm
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage, prepare_lora
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR

pytestmark = pytest.mark.integration
QUICKSTART = RECIPES_DIR / "quickstart.yaml"


def test_smollm2_answers_coherently():
    llm, tok = load_llm("smollm2-135m-instruct", progress=False)
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = llm.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "paris" in text.lower(), text


def test_real_training_steps_reduce_loss_on_a_fixed_batch():
    recipe = load_recipe(QUICKSTART)
    torch.manual_seed(0)
    model, proc = build_model(recipe.model, progress=False)
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    samples = load_jsonl(resolve_data_path("easy-vqa:train"))[:8]
    batch = proc.collate([proc.encode(s) for s in samples])
    groups = apply_stage(model, recipe.stages[0], recipe.lora)
    opt = torch.optim.AdamW(groups, lr=2e-4)
    for g in groups:
        g["lr"] = 2e-4  # no warm-up here: a small constant step overfits the fixed batch smoothly
    model.train()
    model.encoders.eval()
    losses = []
    for _ in range(14):
        loss = model(**batch.model_inputs()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.75 * losses[0], losses


def test_train_eval_chat_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["--set", "stages.0.steps=3", "--set", "stages.1.steps=2", "--set", "stages.1.batch_size=4",
            "--set", "data.eval_limit=12"]  # fmt: skip
    assert main(["train", str(QUICKSTART), "--out", str(run), "--no-progress", *sets]) == 0
    assert (run / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 12 and 0.0 <= summary["accuracy"] <= 1.0 and "blind" in summary
    assert (run / "report.md").is_file() and (run / "loss.png").is_file() and (run / "samples.png").is_file()
    assert main(["report", str(run), "--samples", "4", "--explain", "2", "--no-progress"]) == 0
    page = (run / "report.html").read_text()
    # The pooled connector has no token grid: gradient maps only, one per explained sample.
    assert page.count("data:image/png") == 1 + 4 + 2 and page.count("gradient × input</figcaption>") == 2
    image = load_jsonl(resolve_data_path("easy-vqa:test"))[0].images()[0]
    assert main(["chat", str(run), "--image", str(image), "what color is the shape?"]) == 0
    assert capsys.readouterr().out.strip()
    if espeak_available():  # the answer spoken into a wav file
        spoken = tmp_path / "answer.wav"
        assert (
            main(["chat", str(run), "--image", str(image), "what shape is it?", "--speak", str(spoken)]) == 0
        )
        assert spoken.read_bytes().startswith(b"RIFF") and "spoken answer written" in capsys.readouterr().err
    # a typed-question model asked with a clip says it cannot hear
    clip = tmp_path / "q.wav"
    sf.write(clip, 0.3 * np.sin(np.arange(16000) / 5), 16000)
    assert main(["chat", str(run), "--image", str(image), "--audio", str(clip)]) == 2
    assert "cannot hear" in capsys.readouterr().err
    # Bad input on the real model: a data file with a malformed line, a non-image file.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\nnot json\n')
    assert main(["eval", str(run), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "line 2" in err and "Traceback" not in err
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    assert main(["chat", str(run), "--image", str(text_file), "what is it?"]) == 2
    assert "not a readable image" in capsys.readouterr().err
