"""A run with model.llm.grounding_tokens exports as a plain causal LM: the tags in its tokenizer, their
trained rows in a resized embedding, the same logits as the run."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from badinput import write_llm_folder, write_yaml
from omnifuse.cli import main
from omnifuse.llm.grounding_tokens import TAGS
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from tiny import write_color_dataset

TEXT = "find it: <ref>the shape</ref><box>(0,0),(999,999)</box>"


def test_exported_llm_keeps_the_tags_and_their_rows(tmp_path):
    llm = write_llm_folder(tmp_path / "llm")
    data = write_color_dataset(tmp_path / "colors", n=6)
    recipe = {
        "name": "tiny-grounding-export",
        "model": {
            "encoders": {"image": {"type": "mobilenet_v2", "weights": None, "image_size": 32, "crop": False}},
            "connectors": {"image": {"type": "mlp"}},
            "llm": {"name": str(llm), "system_prompt": "", "grounding_tokens": True},
        },
        "data": {"train": str(data), "eval": str(data), "eval_limit": 6},
        "stages": [{"name": "instruct", "trainable": {"connectors": "full", "llm": "lora"},
                    "lr": {"connectors": 1e-3, "llm": 5e-2}, "steps": 2, "batch_size": 2}],
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "generation": {"max_new_tokens": 3},
        "eval": {"batch_size": 6, "blind": False},
    }  # fmt: skip
    run, out = tmp_path / "run", tmp_path / "export"
    recipe_file = write_yaml(tmp_path / "r.yaml", recipe)
    assert main(["train", str(recipe_file), "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(out), "--format", "llm", "--no-progress"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in TAGS)
    ids = torch.tensor([tokenizer.encode(TEXT, add_special_tokens=False)])
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.get_input_embeddings().num_embeddings == len(tokenizer)
    _, model, _ = load_model(RunDir(run), progress=False, device="cpu", dtype="float32")
    with torch.no_grad():
        ours, theirs = model.llm(input_ids=ids).logits, exported(input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-4
