"""A tiny trained run for the export tests: random MobileNetV2 at 32 px → MLP → tiny Llama with LoRA,
all built from files written here (no assets, no injected parts), so `omnifuse export` reloads it the
way a user's run is reloaded."""

from __future__ import annotations

import pytest
from PIL import Image

from badinput import write_llm_folder, write_yaml
from omnifuse.cli import main
from tiny import write_color_dataset


def cnn_recipe(llm, data) -> dict:
    return {
        "name": "tiny-export",
        "seed": 0,
        "model": {
            "encoders": {"image": {"type": "mobilenet_v2", "weights": None, "image_size": 32, "crop": False}},
            "connectors": {"image": {"type": "mlp"}},
            "llm": {"name": str(llm), "system_prompt": ""},
        },
        "data": {"train": str(data), "eval": str(data), "eval_limit": 6},
        "stages": [
            {"name": "instruct", "trainable": {"connectors": "full", "llm": "lora"},
             "lr": {"connectors": 1e-3, "llm": 5e-2}, "steps": 3, "batch_size": 2, "save_every": 3},
        ],
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "generation": {"max_new_tokens": 3},
        "eval": {"batch_size": 6, "blind": False},
    }  # fmt: skip


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory):
    """(run directory, an image) of the tiny CNN recipe, trained and evaluated."""
    root = tmp_path_factory.mktemp("export-run")
    llm = write_llm_folder(root / "llm")
    data = write_color_dataset(root / "colors", n=6)
    recipe = write_yaml(root / "recipe.yaml", cnn_recipe(llm, data))
    run = root / "run"
    assert main(["train", str(recipe), "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--no-progress"]) == 0
    return run, Image.open(data.parent / "img" / "0.png").convert("RGB")
