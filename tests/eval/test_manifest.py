"""Evaluation manifests on a tiny trained run: written, re-run to the same number, inputs checked."""

from __future__ import annotations

import json

import pytest

from omnifuse.errors import OmnifuseError
from omnifuse.eval.manifest import MANIFEST, read_manifest
from omnifuse.eval.runner import evaluate_run
from omnifuse.recipe import FastVSpec, parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tiny import write_color_dataset

    root = tmp_path_factory.mktemp("manifest")
    data = write_color_dataset(root / "colors")
    raw = tiny_recipe_dict(data)
    raw["data"]["eval_limit"] = 10
    raw["data"]["eval_seed"] = 3
    train(parse_recipe(raw), root / "run", parts=make_parts(), progress=False)
    return RunDir(root / "run"), data


def loaded(run):
    return load_model(run, progress=False, parts=make_parts())


def test_manifest_records_what_decides_the_number(trained):
    run, data = trained
    outcome = evaluate_run(run, progress=False, loaded=loaded(run))
    m = read_manifest(run.path / MANIFEST)
    assert m["data"] == str(data) and len(m["data_sha256"]) == 64
    assert m["subset"]["limit"] == 10 and m["subset"]["seed"] == 3 and m["subset"]["n"] == 10
    assert m["generation"]["max_new_tokens"] == 4 and m["batch_size"] == 8 and m["blind"] is True
    assert m["inference"] == {"quantize": "none", "fastv": None}
    assert (
        "what color is the shape?" in m["prompt"]["example"]
        and "<|im_start|>assistant" in m["prompt"]["example"]
    )
    assert m["scores"] == {
        "accuracy": outcome.result.accuracy,
        "n": 10,
        "blind_accuracy": outcome.blind.accuracy,
    }
    assert {"omnifuse", "torch", "transformers"} <= set(m["versions"])


def test_rerun_from_the_manifest_gives_the_same_scores(trained, tmp_path):
    run, _ = trained
    evaluate_run(run, progress=False, loaded=loaded(run), limit=5, blind=False)
    saved = tmp_path / "m.json"
    saved.write_text((run.path / MANIFEST).read_text())
    # A different evaluation in between: the manifest, not the recipe, decides the re-run.
    evaluate_run(run, progress=False, loaded=loaded(run))
    again = evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved)
    assert again.result.n == 5 and again.blind is None
    assert again.reproduction is not None and again.reproduction.same, again.reproduction
    with pytest.raises(OmnifuseError, match="drop --data"):
        evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved, limit=3)


def test_quantisation_is_recorded_and_held_to_on_a_rerun(trained, tmp_path):
    run, _ = trained
    int8 = load_model(run, progress=False, parts=make_parts(), quantize="int8")
    evaluate_run(run, progress=False, loaded=int8, limit=4, blind=False)
    m = read_manifest(run.path / MANIFEST)
    assert m["inference"] == {"quantize": "int8", "fastv": None}
    saved = tmp_path / "m.json"
    saved.write_text((run.path / MANIFEST).read_text())
    with pytest.raises(OmnifuseError, match="quantised as int8.*loaded as none.*--quantize int8"):
        evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved)
    again = evaluate_run(run, progress=False, loaded=int8, manifest=saved)
    assert again.reproduction is not None and again.reproduction.same


def test_fastv_is_recorded_and_taken_back_on_a_rerun(trained, tmp_path):
    run, _ = trained
    fastv = FastVSpec(layer=1, keep=0.5)
    first = evaluate_run(run, progress=False, loaded=loaded(run), limit=4, blind=False, fastv=fastv)
    m = read_manifest(run.path / MANIFEST)
    assert m["inference"] == {"quantize": "none", "fastv": {"layer": 1, "keep": 0.5}}
    saved = tmp_path / "m.json"
    saved.write_text((run.path / MANIFEST).read_text())
    with pytest.raises(OmnifuseError, match="drop .*--fastv"):
        evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved, fastv=fastv)
    again = evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved)  # FastV from the manifest
    assert again.fastv == first.fastv == {"layer": 1, "keep": 0.5}
    assert again.reproduction is not None and again.reproduction.same


def test_rerun_refuses_changed_data_or_weights(trained, tmp_path):
    run, data = trained
    evaluate_run(run, progress=False, loaded=loaded(run), blind=False)
    saved = tmp_path / "m.json"
    manifest = json.loads((run.path / MANIFEST).read_text())
    manifest["data_sha256"] = "0" * 64
    saved.write_text(json.dumps(manifest))
    with pytest.raises(OmnifuseError, match="data file .* changed"):
        evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved)
    manifest = json.loads((run.path / MANIFEST).read_text())
    manifest["weights_sha256"] = "f" * 64
    manifest["subset"]["seed"] = 4  # another subset too: both problems are named
    saved.write_text(json.dumps(manifest))
    with pytest.raises(OmnifuseError, match="weights .* differ.*other samples"):
        evaluate_run(run, progress=False, loaded=loaded(run), manifest=saved)


def test_bad_manifest_files(tmp_path):
    with pytest.raises(OmnifuseError, match="no evaluation manifest"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(OmnifuseError, match="not a JSON evaluation manifest"):
        read_manifest(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"format": 1, "data": "x"}')
    with pytest.raises(OmnifuseError, match="lacks data_sha256"):
        read_manifest(tmp_path / "y.json")


def test_robustness_probes_are_written_and_reported(trained):
    run, _ = trained
    outcome = evaluate_run(run, progress=False, loaded=loaded(run), robustness=True, blind=False)
    rows = json.loads((run.path / "robustness.json").read_text())
    assert [r["probe"] for r in rows] == ["blank", "noise-0.1", "noise-0.3", "shuffled", "token-dropout-0.5"]
    assert all(r["n"] == outcome.result.n and 0 <= r["answers_changed"] <= 1 for r in rows)
    report = (run.path / "report.md").read_text()
    assert "## Robustness probes" in report and "| shuffled |" in report
