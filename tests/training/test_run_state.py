"""A run cannot go backwards: run status, resume of finished and killed runs, checked weights, NaN stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnifuse.atomic import sha256_file
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training import loop
from omnifuse.training.loop import train
from omnifuse.training.objectives import StepOutput
from tiny import make_parts, tiny_recipe_dict

# Trains the tiny recipe and dies by SIGKILL right after the final checkpoint is committed, before
# model.safetensors is written: the one kill point where the checkpoint alone holds the result.
KILL_BEFORE_WEIGHTS = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny import make_parts, tiny_recipe_dict
from omnifuse.recipe import parse_recipe
from omnifuse.training import loop
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
loop.save_tensors_atomic = die
recipe = parse_recipe(tiny_recipe_dict(Path(sys.argv[1])))
loop.train(recipe, Path(sys.argv[2]), parts=make_parts(), progress=False)
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(data file, a finished tiny run) shared by the tests that only read the run."""
    from tiny import write_color_dataset

    root = tmp_path_factory.mktemp("state")
    data = write_color_dataset(root / "colors")
    recipe = parse_recipe(tiny_recipe_dict(data))
    train(recipe, root / "run", parts=make_parts(), progress=False)
    return data, root / "run"


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


def test_a_finished_run_records_its_status_and_hashes(finished):
    _, run = finished
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished"
    assert status["sha256"]["model.safetensors"] == sha256_file(run / "model.safetensors")
    assert status["sha256"]["recipe.yaml"] == sha256_file(run / "recipe.yaml")


def test_resuming_a_finished_run_changes_nothing(finished, tmp_path):
    data, run = finished
    run = _copy(run, tmp_path / "run")
    before = {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    res = train(parse_recipe(tiny_recipe_dict(data)), run, resume=True, parts=make_parts(), progress=False)
    assert res.already_finished and res.steps == 0
    after = {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize("edit", ["recipe.yaml", "model.safetensors"])
def test_resuming_a_finished_run_whose_files_changed_is_refused_not_retrained(finished, tmp_path, edit):
    """The recipe still reads the same (a comment added) or the weights were replaced: the hashes of
    status.json differ, and --resume must neither retrain nor rewrite anything."""
    data, run = finished
    run = _copy(run, tmp_path / "run")
    with (run / edit).open("ab") as fh:
        fh.write(b"# edited\n" if edit == "recipe.yaml" else b"")
    if edit == "model.safetensors":
        (run / edit).unlink()
    before = {p.name: sha256_file(p) for p in run.iterdir() if p.is_file()}
    with pytest.raises(OmnifuseError, match=f"finished training, but {edit} changed since"):
        train(parse_recipe(tiny_recipe_dict(data)), run, resume=True, parts=make_parts(), progress=False)
    assert {p.name: sha256_file(p) for p in run.iterdir() if p.is_file()} == before


def test_a_kill_between_the_final_checkpoint_and_the_weights_resumes_to_the_trained_weights(
    finished, tmp_path
):
    data, reference = finished
    script = tmp_path / "kill.py"
    script.write_text(KILL_BEFORE_WEIGHTS.format(tests=str(Path(__file__).parents[1])))
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(data), str(run)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (run / "model.safetensors").exists()
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    assert json.loads((run / "checkpoint" / "state.json").read_text())["progress"] == {
        "stage": 2,
        "step": 0,
        "processes": 1,
    }
    with pytest.raises(OmnifuseError, match="has not finished"):
        RunDir(run).require_trained()

    res = train(parse_recipe(tiny_recipe_dict(data)), run, resume=True, parts=make_parts(), progress=False)
    assert res.steps == 0 and not res.already_finished
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)  # trained, not the zero init
    assert RunDir(run).intact_finished()


def test_a_run_whose_weights_changed_after_training_is_refused(finished, tmp_path):
    _, run = finished
    run = _copy(run, tmp_path / "run")
    tensors = load_file(str(run / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(run / "model.safetensors"))
    with pytest.raises(OmnifuseError, match="model.safetensors changed since training"):
        RunDir(run).require_trained()


def _unhashed(run: Path) -> None:
    """Drop the hashes, as in a run written before statuses existed: the weight checks alone must hold."""
    (run / "status.json").unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: {}, "lacks 12 of the 12 trained"),
        (lambda t: dict(list(t.items())[: len(t) // 2]), "lacks 6 of the 12 trained"),
        (lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}, "NaN or infinite"),
        (lambda t: {**t, "llm.not_a_parameter": torch.zeros(2)}, "does not have"),
        (lambda t: {k: v.reshape(-1)[:1].clone() for k, v in t.items()}, "shapes differ"),
    ],
    ids=["empty", "half", "nan", "unknown-key", "wrong-shapes"],
)
def test_damaged_weights_are_refused_when_loaded(finished, tmp_path, damage, message):
    _, run = finished
    run = _copy(run, tmp_path / "run")
    _unhashed(run)
    save_file(damage(load_file(str(run / "model.safetensors"))), str(run / "model.safetensors"))
    with pytest.raises(OmnifuseError, match=message):
        load_model(RunDir(run), progress=False, parts=make_parts())


def test_a_failed_run_says_why(tmp_path, color_data, monkeypatch):
    def diverge(model, proc, samples, stage):
        return StepOutput(torch.tensor(float("nan"), requires_grad=True), {}, 8)

    monkeypatch.setitem(loop.OBJECTIVES, "lm", diverge)
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    with pytest.raises(OmnifuseError, match=r"stage 'align' step 1: the loss \(nan\) is not finite"):
        train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "not finite" in status["error"]
    with pytest.raises(OmnifuseError, match="failed .*not finite"):
        RunDir(tmp_path / "run").require_trained()


def test_non_finite_weights_are_never_saved(tmp_path):
    from omnifuse.models.weights import save_weights

    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    with pytest.raises(OmnifuseError, match="weight hold NaN or infinite"):
        save_weights(layer, ["weight", "bias"], tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "state.json").write_text("{not json"), "not valid JSON"),
        (lambda c: (c / "state.json").write_text('{"progress": {"stage": "one", "step": 0}}'), "has no"),
        (lambda c: _edit_state(c, progress={"stage": "one", "step": 0}), "progress .* is damaged"),
        (lambda c: _edit_state(c, progress={"stage": 7, "step": 0}), "does not fit the recipe"),
        (lambda c: _edit_state(c, weights="all"), "weights is 'all', not a list"),
        (lambda c: (c / "optimizer.safetensors").write_bytes(b""), "optimizer.safetensors .*empty"),
        (lambda c: (c / "rng.safetensors").write_text("hello"), "rng.safetensors is not a readable"),
    ],
    ids=[
        "state-json",
        "state-fields",
        "progress-type",
        "progress-range",
        "weights-type",
        "optimizer-empty",
        "rng-text",
    ],
)
def test_a_damaged_checkpoint_is_a_clear_error_on_resume(tmp_path, color_data, monkeypatch, damage, message):
    real_save = loop.save_checkpoint

    def crash_after(folder, model, names, optimizer, progress, **kw):
        real_save(folder, model, names, optimizer, progress, **kw)
        if (progress["stage"], progress["step"]) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash_after)
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    damage(tmp_path / "run" / "checkpoint")
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    with pytest.raises(OmnifuseError, match=message):
        train(recipe, tmp_path / "run", resume=True, parts=make_parts(), progress=False)


def _edit_state(folder: Path, **fields) -> None:
    state = json.loads((folder / "state.json").read_text())
    state.update(fields)
    (folder / "state.json").write_text(json.dumps(state))


def test_damaged_metric_lines_are_dropped_on_resume(tmp_path, color_data, monkeypatch):
    real_save = loop.save_checkpoint

    def crash_after(folder, model, names, optimizer, progress, **kw):
        real_save(folder, model, names, optimizer, progress, **kw)
        if (progress["stage"], progress["step"]) == (0, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash_after)
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '[1, 2]\n{"stage_index": "x", "step": 1}\n{"half": ')
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(recipe, tmp_path / "run", resume=True, parts=make_parts(), progress=False)
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [(r["stage_index"], r["step"]) for r in records] == [(0, s) for s in range(1, 5)] + [
        (1, s) for s in range(1, 5)
    ]
