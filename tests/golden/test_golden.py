"""Behaviour pinned across refactors: one tiny run of each task (generate, classify, align) trained
with a fixed seed must give the loss sequence and the final trained weights recorded in golden.json.

golden.json was written before the Task-layer refactor (issue 17) by

    OMNIFUSE_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/golden

A change that alters training on purpose rewrites it the same way, in its own commit, saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from omnifuse.recipe import parse_recipe
from tiny import make_parts, tiny_recipe_dict, write_color_dataset

GOLDEN = Path(__file__).with_name("golden.json")
WRITE = os.environ.get("OMNIFUSE_WRITE_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    """One intra-op thread: the float reduction order (and so the last bits) does not depend on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))
    yield
    torch.set_num_threads(threads)


def _fingerprint(run: Path) -> dict:
    """The loss of every logged step or epoch, and per trained tensor its shape, sum and sum of squares."""
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    tensors = {
        name: {
            "shape": list(t.shape),
            "sum": t.double().sum().item(),
            "sq": t.double().square().sum().item(),
        }
        for name, t in sorted(load_file(run / "model.safetensors").items())
    }
    return {"losses": losses, "tensors": tensors}


def _check(kind: str, run: Path) -> None:
    got = _fingerprint(run)
    if WRITE:
        table = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        table[kind] = got
        GOLDEN.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(GOLDEN.read_text())[kind]
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5, abs=1e-7)
    assert sorted(got["tensors"]) == sorted(want["tensors"]), "the saved tensors changed"
    for name, w in want["tensors"].items():
        g = got["tensors"][name]
        assert g["shape"] == w["shape"], name
        # abs 1e-5: a tensor that is zero up to float32 rounding (the PCA mean of standardised features,
        # sum ~1e-6) sums to reduction-order noise, which differs between numpy builds
        assert g["sum"] == pytest.approx(w["sum"], rel=1e-4, abs=1e-5), name
        assert g["sq"] == pytest.approx(w["sq"], rel=1e-4, abs=1e-6), name


def test_generate_tiny_run_is_unchanged(tmp_path):
    from omnifuse.training.loop import train

    data = write_color_dataset(tmp_path / "colors")
    recipe = parse_recipe(tiny_recipe_dict(data))
    train(recipe, tmp_path / "run", progress=False, parts=make_parts())
    _check("generate", tmp_path / "run")


def test_classify_tiny_run_is_unchanged(tmp_path):
    from omnifuse.tasks.classify.trainer import train_classifier
    from tasks.classify.test_classifier import toy_recipe

    raw = toy_recipe(tmp_path, train={"epochs": 3, "modality_dropout": 0.2})
    train_classifier(parse_recipe(raw), tmp_path / "run", progress=False)
    _check("classify", tmp_path / "run")


@pytest.mark.parametrize(
    "method", [{"type": "clip", "dim": 16, "hidden": 32}, {"type": "cca", "components": 3, "pca": 16}]
)
def test_align_tiny_run_is_unchanged(tmp_path, method):
    from omnifuse.tasks.align.run import train_align
    from tasks.align.test_align_run import recipe_dict, write_av_set

    train, test = write_av_set(tmp_path / "train", 8, seed=0), write_av_set(tmp_path / "test", 4, seed=1)
    raw = recipe_dict(method, train, test, epochs=5)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    train_align(parse_recipe(raw), tmp_path / "run", progress=False)
    _check(f"align-{method['type']}", tmp_path / "run")
