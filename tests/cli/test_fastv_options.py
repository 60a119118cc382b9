"""--fastv-keep / --fastv-layer: checked before any model loads, and an evaluation records the pruning it
answered with (eval.json "fastv")."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from omnifuse.cli.common import fastv_option
from omnifuse.errors import OmnifuseError
from omnifuse.eval import runner
from omnifuse.recipe import FastVSpec, load_recipe
from omnifuse.recipes import RECIPES_DIR
from omnifuse.rundir import RunDir


def test_options_become_a_spec_or_a_clear_error():
    assert fastv_option(None, None) is None  # the recipe's own setting
    spec = fastv_option(0.5, None)
    assert (spec.layer, spec.keep) == (2, 0.5)
    assert fastv_option(0.25, 3) == FastVSpec(layer=3, keep=0.25)
    for keep, layer, said in ((None, 2, "--fastv-keep too"), (0.0, None, "in \\(0, 1\\]"), (1.5, None, "in \\(0, 1\\]"),
                              (0.5, 0, "at least 1")):  # fmt: skip
        with pytest.raises(OmnifuseError, match=said):
            fastv_option(keep, layer)


def test_evaluation_uses_and_records_the_override(color_data, tmp_path, monkeypatch):
    quickstart = RECIPES_DIR / "quickstart.yaml"
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copy(quickstart, run.recipe_file)
    recipe = load_recipe(quickstart, ["eval.blind=false"])
    engines = []

    class FakeEngine:
        processor = SimpleNamespace(speech_to_text=None)  # no ASR cascade

        def __init__(self, model, processor, pruning=None, pack_weights=True):
            engines.append(pruning)

        def generate(self, prompts, cfg):
            return ["red"] * len(prompts)

    monkeypatch.setattr(runner, "Engine", FakeEngine)
    monkeypatch.setattr(runner, "build_manifest", lambda *args: {})
    model = torch.nn.Linear(1, 1)
    override = FastVSpec(layer=3, keep=0.25)
    runner.evaluate_run(
        run, data=str(color_data), progress=False, loaded=(recipe, model, None), fastv=override
    )
    assert [(p.layer, p.keep) for p in engines] == [(3, 0.25)]
    assert json.loads((run.path / "eval.json").read_text())["fastv"] == {"layer": 3, "keep": 0.25}
