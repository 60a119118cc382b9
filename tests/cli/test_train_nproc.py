"""`omnifuse train RECIPE --nproc 2` starts torchrun itself: two gloo processes on this CPU train a recipe
whose parts are folders on disk (a tiny LLM, a random MobileNetV2), and the run is the one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import omnifuse as omnifuse_pkg
from tiny import CHATML, make_llm, make_tokenizer, tiny_recipe_dict

pytestmark = pytest.mark.slow


def write_recipe(tmp_path, data, batch: int) -> str:
    tok = make_tokenizer(CHATML)
    make_llm(len(tok)).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    raw = tiny_recipe_dict(data)
    raw["model"]["encoders"]["image"] = {
        "type": "mobilenet_v2",
        "weights": None,
        "image_size": 64,
        "crop": False,
    }
    raw["model"]["llm"]["name"] = str(tmp_path / "llm")
    for stage in raw["stages"]:
        stage["steps"], stage["batch_size"] = 2, batch
    path = tmp_path / f"recipe-{batch}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def omnifuse(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "omnifuse", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_train_nproc_2_runs_torchrun_and_matches_one_process(tmp_path, color_data):
    two = omnifuse("train", write_recipe(tmp_path, color_data, 2), "--out", str(tmp_path / "two"),
                   "--nproc", "2", "--no-progress")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "starting 2 processes" in two.stderr and "global batch 4" in two.stderr
    assert two.stdout.count("trained tiny") == 1  # one process reports
    one = omnifuse(
        "train", write_recipe(tmp_path, color_data, 4), "--out", str(tmp_path / "one"), "--no-progress"
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_classifier_recipes_refuse_several_processes(tmp_path):
    recipe = Path(omnifuse_pkg.__file__).parent / "recipes" / "classic" / "easy-vqa-cls.yaml"
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "omnifuse", "train", str(recipe), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "trains in one process" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
