"""The generate task through the registry: validate's line, the sweep budget and plan, ``omnifuse eval``
rendered from the task's printout, ``compare`` labelled by question type, the loading verbs."""

from __future__ import annotations

import json

import pytest
import yaml
from rich.console import Console

from omnifuse.cli import console, main
from omnifuse.recipe import parse_recipe
from omnifuse.tasks import task_for
from omnifuse.tasks.generate import GENERATE
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict, write_color_dataset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    data = write_color_dataset(root / "colors")
    raw = tiny_recipe_dict(data)
    train(parse_recipe(raw), root / "run", parts=make_parts(), progress=False)
    return root, raw


@pytest.fixture(autouse=True)
def tiny_loading(monkeypatch):
    """The CLI loads the run from the tiny parts instead of the packaged assets."""
    import omnifuse.tasks.generate.load as load

    real = load.load_model
    monkeypatch.setattr(
        load,
        "load_model",
        lambda run, progress=True, parts=None, **placement: real(run, False, make_parts(), **placement),
    )
    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=220))


def test_the_registry_gives_the_generate_task_its_recipe(tiny_run, tmp_path, capsys):
    _, raw = tiny_run
    recipe = parse_recipe(raw)
    assert task_for(recipe) is GENERATE
    steps = sum(s["steps"] * s.get("batch_size", 1) * s.get("grad_accum", 1) for s in raw["stages"])
    assert GENERATE.training_samples(recipe) == steps
    assert GENERATE.plan(recipe) == " → ".join(s["name"] for s in raw["stages"])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", str(tmp_path / "r.yaml")]) == 0
    assert f"valid recipe 'tiny'; stages: {raw['stages'][0]['name']}" in capsys.readouterr().out


def test_eval_and_compare_of_a_generate_run_through_its_task(tiny_run, capsys):
    root, _ = tiny_run
    run = root / "run"
    assert main(["eval", str(run), "--no-progress", "--no-blind"]) == 0
    out = capsys.readouterr().out
    assert "evaluation on" in out and "question type" in out and "manifest:" in out
    assert main(["eval", str(run), "--json", "--no-blind"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy"] == json.loads((run / "eval.json").read_text())["accuracy"]
    assert main(["compare", str(run), str(run)]) == 0
    out = capsys.readouterr().out
    assert "question type" in out and "accuracy A" in out and "+0.0" in out


def test_eval_runs_where_device_and_dtype_say(tiny_run, tmp_path, capsys):
    """``--device cpu --dtype bfloat16``: the run is reloaded with every parameter in bf16 (inference
    trains nothing) and evaluated under autocast; the flags reach the loader through the task."""
    import shutil

    import torch

    from omnifuse.rundir import RunDir
    from omnifuse.runtime import placement_of
    from omnifuse.tasks.generate.load import load_model

    root, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)  # eval rewrites eval.json: not the module's run
    _, model, processor = load_model(RunDir(run), False, make_parts(), device="cpu", dtype="bfloat16")
    assert placement_of(model).dtype == torch.bfloat16 and processor.device == torch.device("cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if p.is_floating_point())
    assert main(["eval", str(run), "--json", "--no-blind", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0.0 <= summary["accuracy"] <= 1.0
