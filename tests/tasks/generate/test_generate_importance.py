"""``omnifuse eval --importance`` on a generate run, end to end through the CLI: a tiny model whose connector's
output layer is zeroed cannot see the image (every image becomes the same zero tokens), so permuting the images
or replacing them by noise changes no answer — a drop of exactly 0 with its interval at 0; the table goes to
eval.json and the printout, on the --limit subset, with the blind baseline reused as the image removal.

The tiny random LLM answers every prompt alike, so this checks the wiring; that a modality the model does use
shows a clear drop (and one it ignores none) is tested on an engine that looks: tests/eval/test_importance.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnifuse.cli import main
from omnifuse.rundir import RunDir
from tasks.generate.test_generate_task import tiny_loading as tiny_loading  # noqa: F401  (autouse)
from tasks.generate.test_generate_task import tiny_run as tiny_run  # noqa: F401


@pytest.fixture(scope="module")
def blind_run(tiny_run, tmp_path_factory):  # noqa: F811
    """The tiny run with its connector's output layer zeroed (weights and bias): the image tokens are 0."""
    root, _ = tiny_run
    run = tmp_path_factory.mktemp("importance") / "run"
    shutil.copytree(root / "run", run)
    tensors = load_file(str(run / "model.safetensors"))
    layers = sorted({k.rsplit(".", 1)[0] for k in tensors if k.startswith("connectors.image.")})
    assert layers, sorted(tensors)[:10]
    last = layers[-1]
    save_file(
        {k: torch.zeros_like(v) if k.rsplit(".", 1)[0] == last else v for k, v in tensors.items()},
        str(run / "model.safetensors"),
    )
    RunDir(run).set_state("finished")
    return run


def test_an_image_the_model_cannot_see_has_no_importance(blind_run, capsys):
    args = ["eval", str(blind_run), "--importance", "--limit", "12", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "modality importance (accuracy in %" in out and "noise: input space" in out
    summary = json.loads((blind_run / "eval.json").read_text())
    rows = {r["perturbation"]: r for r in summary["importance"]["rows"]}
    assert list(rows) == ["remove", "permute", "noise"] and all(
        r["modality"] == "image" for r in rows.values()
    )
    assert all(r["n"] == 12 and r["intact"] == summary["accuracy"] for r in rows.values())
    assert rows["remove"]["perturbed"] == summary["blind"]["accuracy"]  # the blind baseline is the removal
    for p in ("permute", "noise"):
        assert rows[p]["drop"] == 0.0 and rows[p]["ci95"] == [0.0, 0.0] and rows[p]["p_value"] == 1.0
    assert "## Modality importance" in (blind_run / "report.md").read_text()


def test_generate_importance_on_its_own_and_seeded(blind_run, capsys):
    args = ["eval", str(blind_run), "--importance", "--perturbations", "permute", "--limit", "6", "--json"]
    assert main([*args, "--no-blind", "--importance-seed", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "blind" not in summary and summary["importance"]["seed"] == 2
    assert [(r["perturbation"], r["n"]) for r in summary["importance"]["rows"]] == [("permute", 6)]
