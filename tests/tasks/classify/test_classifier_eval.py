"""``omnifuse eval`` / ``compare`` on classifier runs: the head rebuilt from the run directory scores what
training scored (also under DP-SGD, whose ε is reported again), on other data too; per-sample predictions
pair two runs, grouped by class."""

from __future__ import annotations

import json

import pytest
import yaml

from omnifuse.cli import main
from tasks.classify.test_classifier import CLASSES, toy_recipe, write_toy


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    from rich.console import Console

    from omnifuse.cli import console

    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=220))  # tables unwrapped


def _train(tmp_path, out, *sets, **changes) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(toy_recipe(tmp_path, train={"epochs": 2}, **changes)))
    assert main(["train", str(path), "--out", str(out), "--no-progress", *sets]) == 0


def test_eval_and_compare_on_classifier_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _train(tmp_path, a)
    _train(tmp_path, b, "--set", "seed=1", "--set", "model.fusion={type: late_average, dim: 8}")
    trained = json.loads((a / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == trained
    predictions = [json.loads(x) for x in (a / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 24 and {p["question_type"] for p in predictions} == set(CLASSES)
    assert sum(p["correct"] for p in predictions) == round(24 * trained["accuracy"])
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "accuracy A" in out and "class" in out and all(f"│ {c} " in out for c in CLASSES)
    assert main(["compare", str(a), str(b), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 24 and set(summary["per_type"]) == set(CLASSES)
    assert summary["mean_a"] == pytest.approx(trained["accuracy"])


def test_eval_on_other_data_and_a_subset(tmp_path, capsys):
    run = tmp_path / "run"
    _train(tmp_path, run)
    other = write_toy(tmp_path / "other", 30, 7)
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--data", other, "--limit", "9"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 9 and result["data"] == other and sum(map(sum, result["confusion"])) == 9
    assert "accuracy" in (run / "report.md").read_text()
    assert main(["eval", str(run), "--blind", "--robustness"]) == 2
    assert "--blind and --robustness: for LLM runs" in capsys.readouterr().err.replace("\n", " ")
    # report.html is for LLM runs: the classifier's report.md is named instead.
    assert main(["report", str(run), "--no-progress"]) == 2
    assert "its report is" in capsys.readouterr().err.replace("\n", " ")


def test_eval_of_a_private_run_reports_the_epsilon_training_spent(tmp_path, capsys):
    run = tmp_path / "run"
    _train(tmp_path, run, privacy={"target_epsilon": 4.0, "delta": 1.0e-3})
    trained = json.loads((run / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 0
    assert "DP-SGD spent ε" in capsys.readouterr().out
    again = json.loads((run / "eval.json").read_text())
    assert again["privacy"] == trained["privacy"] and again["accuracy"] == trained["accuracy"]
