"""``omnifuse eval --importance`` on alignment runs: R@1 per direction with one side permuted or replaced by
noise. A trained dual encoder loses clearly on both sides; one whose image head cannot see its input (its
last layer's weights zeroed) loses nothing from changing the images; ``remove`` is refused when asked for."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from omnifuse.cli import main
from omnifuse.rundir import RunDir
from tasks.align.test_align_run import recipe_dict, write_av_set


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CLIP run, and a copy whose image head ignores the images (trained once, its own feature cache)."""
    root = tmp_path_factory.mktemp("align-importance")
    train, test = write_av_set(root / "train", 24, seed=0), write_av_set(root / "test", 8, seed=1)
    (root / "r.yaml").write_text(
        yaml.safe_dump(recipe_dict({"type": "clip", "dim": 16, "hidden": 32}, train, test))
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIFUSE_CACHE", str(root / "cache"))
        assert main(["train", str(root / "r.yaml"), "--out", str(root / "seen"), "--no-progress"]) == 0
        blind = root / "blind"
        shutil.copytree(root / "seen", blind)
        tensors = load_file(str(blind / "model.safetensors"))
        # The image head's last layer ignores its input: every image embeds to the same vector (its bias).
        tensors["head_a.3.weight"] = torch.zeros_like(tensors["head_a.3.weight"])
        save_file(tensors, str(blind / "model.safetensors"))
        RunDir(blind).set_state("finished")
        yield root


def _eval(run, *args) -> dict:
    assert main(["eval", str(run), "--importance", "--json", *args]) == 0
    return json.loads((run / "eval.json").read_text())["importance"]


def _rows(summary: dict) -> dict:
    return {(r["modality"], r["perturbation"], r["measure"]): r for r in summary["rows"]}


def test_both_sides_matter_to_a_trained_dual_encoder(runs, capsys):
    summary = _eval(runs / "seen")
    rows = _rows(summary)
    directions = ("R@1 image to audio", "R@1 audio to image")
    assert set(rows) == {
        (m, p, d) for m in ("image", "audio") for p in ("permute", "noise") for d in directions
    }
    assert any("remove: not defined for retrieval" in n for n in summary["notes"])
    for r in rows.values():
        assert r["n"] == 32 and r["intact"] > 0.6
        assert r["drop"] > 0.2 and r["ci95"][0] > 0 and r["p_value"] < 0.01, r


def test_a_side_the_model_cannot_see_has_no_importance(runs, capsys):
    capsys.readouterr()
    assert main(["eval", str(runs / "blind"), "--importance", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "modality importance" in out and "measure" in out and "remove: not defined" in out
    rows = _rows(json.loads((runs / "blind" / "eval.json").read_text())["importance"])
    for (modality, _, _), r in rows.items():
        if modality == "image":
            # The same R@1; single queries may flip where float rounding in the similarity matmul breaks the
            # ties of identical embeddings differently, so the interval is around 0 rather than exactly 0.
            assert r["drop"] == pytest.approx(0.0, abs=1e-9) and r["ci95"][0] <= 0.0 <= r["ci95"][1]
            assert r["p_value"] > 0.5
    assert "## Modality importance" in (runs / "blind" / "report.md").read_text()


def test_align_importance_is_seeded_and_refuses_remove(runs, capsys):
    first = _eval(runs / "seen", "--importance-seed", "5", "--perturbations", "permute")
    assert first == _eval(runs / "seen", "--importance-seed", "5", "--perturbations", "permute")
    assert main(["eval", str(runs / "seen"), "--importance", "--perturbations", "remove"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "not defined for retrieval" in err
        and "--perturbations permute,noise" in err
        and "Traceback" not in err
    )
