"""``omnifuse eval --importance`` on classifier runs: a modality the head cannot see (its projection zeroed
after training) has no importance, with an interval at 0; the modality it does see drops clearly; the
table is seeded; it lands in eval.json, report.md and the printed table."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnifuse.cli import main
from omnifuse.rundir import RunDir
from tasks.classify.test_classifier_eval import _train
from tasks.classify.test_classifier_eval import cache as cache  # noqa: F401  (the autouse fixture)


def _blind_to(run, modality: str) -> None:
    """Zero modality's projection (weights and biases): its ReLU output is 0 whatever the input, which is
    also what concat fusion sees when the modality is dropped. The run's recorded hashes are renewed."""
    tensors = load_file(str(run / "model.safetensors"))
    zeroed = [k for k in tensors if k.startswith(f"projections.{modality}.")]
    assert zeroed
    save_file(
        {k: torch.zeros_like(v) if k in zeroed else v for k, v in tensors.items()},
        str(run / "model.safetensors"),
    )
    RunDir(run).set_state("finished")


@pytest.fixture(scope="module")
def blind_run(tmp_path_factory):
    """Trained once for the module (its own feature cache); each test evaluates it again."""
    root = tmp_path_factory.mktemp("importance")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIFUSE_CACHE", str(root / "cache"))
        _train(root, root / "run", "--set", "train.epochs=6")
    _blind_to(root / "run", "audio")
    return root / "run"


def _rows(run) -> dict:
    rows = json.loads((run / "eval.json").read_text())["importance"]["rows"]
    return {(r["modality"], r["perturbation"]): r for r in rows}


def test_importance_is_zero_for_an_unseen_modality_and_positive_for_the_seen_one(blind_run, capsys):
    assert main(["eval", str(blind_run), "--importance", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "modality importance" in out and "drop [95 % CI]" in out and "paired bootstrap" in out
    rows = _rows(blind_run)
    assert set(rows) == {(m, p) for m in ("audio", "image") for p in ("remove", "permute", "noise")}
    for p in ("remove", "permute", "noise"):
        audio = rows["audio", p]
        assert (
            audio["drop"] == 0.0 and audio["ci95"][0] <= 0.0 <= audio["ci95"][1] and audio["p_value"] == 1.0
        )
        assert audio["lost"] == audio["gained"] == 0
    intact = rows["image", "permute"]["intact"]
    assert intact > 0.8
    for p in ("permute", "noise"):  # the image carries the class: without it, about chance (1/3)
        image = rows["image", p]
        assert image["intact"] == intact and image["n"] == 24
        assert image["drop"] > 0.3 and image["ci95"][0] > 0.0 and image["p_value"] < 0.01
    assert "## Modality importance" in (blind_run / "report.md").read_text()


def test_importance_is_seeded_and_follows_the_options(blind_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(blind_run, other)
    for run in (blind_run, other):
        assert main(["eval", str(run), "--importance", "--importance-seed", "3", "--json"]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["importance"] == second["importance"] and first["importance"]["seed"] == 3
    assert (
        main(["eval", str(blind_run), "--importance", "--perturbations", "noise", "--limit", "12", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)["importance"]
    assert [(r["modality"], r["perturbation"], r["n"]) for r in summary["rows"]] == [
        ("audio", "noise", 12),
        ("image", "noise", 12),
    ]
    # Three draws of each permutation, averaged per sample: the unseen audio still loses nothing.
    assert main(["eval", str(blind_run), "--importance", "--importance-repeats", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["importance"]
    assert summary["repeats"] == 3
    for r in summary["rows"]:
        assert r["drop"] == 0.0 if r["modality"] == "audio" else r["ci95"][0] > 0.0
    # Without --importance, eval.json holds no (stale) importance.
    assert main(["eval", str(blind_run), "--json"]) == 0
    assert "importance" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--importance", "--perturbations", "remove,shuffle"],
            "unknown 'shuffle'; name one or more of remove",
        ),
        (
            ["--perturbations", "noise"],
            "--perturbations set(s) up the modality importance, which runs only with",
        ),
        (["--importance-seed", "2"], "runs only with --importance"),
        (["--importance", "--importance-repeats", "0"], "draw each permutation and noise at least once"),
        (["--importance", "--limit", "1", "--perturbations", "permute"], "needs at least two; there are 1"),
    ],
)
def test_bad_importance_options_are_one_paragraph(blind_run, args, message, capsys):
    assert main(["eval", str(blind_run), "--no-progress", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err
