"""``omnifuse eval`` / ``compare`` / ``sweep`` on alignment runs: the method restored from the run
directory scores what training scored; per-query predictions pair two runs; a sweep tabulates R@k."""

from __future__ import annotations

import json

import pytest
import yaml

from omnifuse.cli import main
from tasks.align.test_align_run import recipe_dict, write_av_set

METHODS = [
    {"type": "clip", "dim": 8, "hidden": 16},
    {"type": "siglip", "dim": 8, "hidden": 16},
    {"type": "cca", "components": 3, "pca": 12},
    {"type": "dcca", "dim": 3, "hidden": 16},
    {"type": "cycle", "latent": 6, "hidden": 16},
]


@pytest.fixture(scope="module")
def av_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    return write_av_set(root / "train", 8, seed=0), write_av_set(root / "test", 4, seed=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    from rich.console import Console

    from omnifuse.cli import console

    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=220))  # tables unwrapped


def _recipe(tmp_path, av_set, method, name="r.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe_dict(method, *av_set, epochs=4, batch_size=16)))
    return str(path)


def _close(a, b):
    """Equal up to float32 storage of a solver's arrays (CCA is fitted in float64)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return b == pytest.approx(a, rel=1e-4, abs=1e-5)
    return a == b


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["type"])
def test_eval_restores_the_method_and_scores_what_training_scored(method, av_set, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", _recipe(tmp_path, av_set, method), "--out", str(run), "--no-progress"]) == 0
    trained = json.loads((run / "eval.json").read_text())
    predictions = (run / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "retrieval on 16 eval pairs" in out and "image to audio" in out and "R@10" in out
    assert _close(trained, json.loads((run / "eval.json").read_text()))
    if method["type"] != "cca":  # CCA's ranks may break float32 ties differently; the others are exact
        assert (run / "predictions.jsonl").read_text() == predictions
    assert main(["eval", str(run), "--json", "--limit", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_eval_pairs"] == 8 and set(summary["retrieval"]) == {"image_to_audio", "audio_to_image"}


def test_compare_pairs_two_alignment_runs_by_query(av_set, tmp_path, capsys):
    recipe = _recipe(tmp_path, av_set, METHODS[0])
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", recipe, "--out", str(a), "--no-progress"]) == 0
    assert main(["train", recipe, "--out", str(b), "--no-progress", "--set", "seed=1"]) == 0
    lines = [json.loads(x) for x in (a / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 32 and {x["question_type"] for x in lines} == {"image_to_audio", "audio_to_image"}
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "R@1 A" in out and "R@1 B" in out and "direction" in out and "audio_to_image" in out
    assert main(["compare", str(a), str(b), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 32 and set(summary["per_type"]) == {"image_to_audio", "audio_to_image"}


def test_a_sweep_of_an_alignment_recipe_runs_and_prints_its_table(av_set, tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe_dict(METHODS[0], *av_set, epochs=3)))
    spec = {
        "name": "tiny-align",
        "base": "base.yaml",
        "seeds": [0, 1],
        "allow_few_seeds": True,
        "variants": [
            {"name": "clip"},
            {"name": "cca", "set": ["method={type: cca, components: 3, pca: 12}"]},
        ],
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "3 epochs" in printed.err and "one fit" in printed.err  # the plan
    assert "sweep tiny-align" in printed.out and "R@1" in printed.out and "R@10" in printed.out
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(0 <= r["accuracy"] <= 1 for r in records)
    assert all(set(r["metrics"]) >= {"R@1", "R@5", "R@10", "image_to_audio R@1"} for r in records)
    report = (out / "report.md").read_text()
    assert "| variant | mean R@1 (± 95 % CI) |" in report and "| cca |" in report
    # Run again: both finished, nothing trains.
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("done before, skipped") == 4


def test_a_sweep_mixing_tasks_is_refused(av_set, tmp_path, capsys):
    from tasks.classify.test_classifier import toy_recipe

    (tmp_path / "align.yaml").write_text(yaml.safe_dump(recipe_dict(METHODS[0], *av_set, epochs=3)))
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(toy_recipe(tmp_path)))
    spec = {"name": "mixed", "seeds": [0], "allow_few_seeds": True,
            "variants": [{"name": "a", "recipe": "align.yaml"}, {"name": "c", "recipe": "clf.yaml"}]}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--plan"]) == 2
    assert "mixes tasks (a: align, c: classify)" in capsys.readouterr().err


def test_eval_of_a_devise_run_scores_zero_shot_again(av_set, tmp_path, capsys):
    from omnifuse.assets import get_asset, is_installed

    if not is_installed(get_asset("all-minilm-l6-v2")):
        pytest.skip("needs the packaged MiniLM")
    raw = recipe_dict({"type": "devise", "heldout": ["3"]}, *av_set, epochs=2)
    raw["model"] = {"encoders": {"image": {"type": "pixels", "size": 12}, "text": {"type": "minilm"}},
                    "normalize": {"text": "none"}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(run), "--no-progress"]) == 0
    trained = json.loads((run / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 0
    assert "zero-shot accuracy" in capsys.readouterr().out
    assert _close(trained, json.loads((run / "eval.json").read_text()))
    lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["answer"] == "3" for x in lines)  # the held-out class's eval samples
    assert sum(x["correct"] for x in lines) / 4 == pytest.approx(
        trained["zero_shot"]["zero_shot_accuracy_all"]
    )
