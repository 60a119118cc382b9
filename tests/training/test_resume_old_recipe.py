"""A run started before the objective became a tagged union resumes: its saved recipe.yaml spells the
objective the old way (`objective: generative` plus flat distill_* keys) and still reads as the same recipe."""

from __future__ import annotations

import pytest

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import RuntimeSpec, parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.training.loop import prepare_run_dir
from tiny import tiny_recipe_dict, write_color_dataset

OLD = "objective: generative\n  distill_weight: 0.5\n  distill_temperature: 1.0\n"


def test_an_old_run_directory_resumes_as_the_same_recipe(tmp_path):
    recipe = parse_recipe(tiny_recipe_dict(write_color_dataset(tmp_path / "data", n=3)))
    run = RunDir(tmp_path / "run")
    assert prepare_run_dir(run, recipe, resume=False) is False
    new = run.recipe_file.read_text()
    assert new.count("objective:\n    type: lm\n") == 2
    run.recipe_file.write_text(
        new.replace("objective:\n    type: lm\n", OLD)
    )  # as an older omnifuse wrote it
    assert prepare_run_dir(run, recipe, resume=True) is False
    assert run.recipe_file.read_text() == new  # rewritten in the current spelling
    changed = parse_recipe(tiny_recipe_dict(tmp_path / "data" / "data.jsonl") | {"seed": 1})
    with pytest.raises(OmnifuseError, match="the recipe differs"):
        prepare_run_dir(run, changed, resume=True)


def test_a_run_resumes_on_another_device_dtype_or_process_count(tmp_path):
    """``runtime`` is where a run runs, not what it is: resuming with another one is the same run."""
    run = RunDir(tmp_path / "run")
    recipe = parse_recipe({"name": "r", "model": {"encoders": {"image": {"type": "mobilenet_v2"}},
                           "connectors": {"image": {"type": "mlp"}}, "llm": {"name": "x"}},
                           "stages": [{"name": "s", "trainable": {"connectors": "full"},
                                       "lr": {"connectors": 1e-3}, "steps": 1}]})  # fmt: skip
    assert prepare_run_dir(run, recipe, resume=False) is False
    moved = recipe.model_copy(update={"runtime": RuntimeSpec(dtype="bfloat16", device="cpu")})
    assert prepare_run_dir(run, moved, resume=True) is False
    assert "bfloat16" in run.recipe_file.read_text()  # the recipe file records the latest runtime
    other = recipe.model_copy(update={"seed": 5})
    with pytest.raises(OmnifuseError, match="recipe differs"):
        prepare_run_dir(run, other, resume=True)
