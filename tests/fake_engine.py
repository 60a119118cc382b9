"""A quickstart run directory whose evaluation runs on a fake engine: tests of how ``omnifuse eval`` options
reach the engine, without a model."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

from omnifuse.eval import runner
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR
from omnifuse.rundir import RunDir


def fake_engine_run(tmp_path, monkeypatch):
    """``(run, recipe, built)``: a run holding the quickstart recipe, that recipe loaded (no blind pass), and the
    list each engine the eval runner builds appends its options to (``{"pruning": ..., "pack_weights": ...}``);
    the engine answers "red" to every prompt."""
    quickstart = RECIPES_DIR / "quickstart.yaml"
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copy(quickstart, run.recipe_file)
    recipe = load_recipe(quickstart, ["eval.blind=false"])
    built: list[dict] = []

    class FakeEngine:
        processor = SimpleNamespace(speech_to_text=None)  # no ASR cascade

        def __init__(self, model, processor, pruning=None, pack_weights=True):
            built.append({"pruning": pruning, "pack_weights": pack_weights})

        def generate(self, prompts, cfg):
            return ["red"] * len(prompts)

    monkeypatch.setattr(runner, "Engine", FakeEngine)
    monkeypatch.setattr(runner, "build_manifest", lambda *args: {})
    return run, recipe, built
