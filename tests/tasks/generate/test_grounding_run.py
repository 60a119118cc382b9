"""A tiny run trained and evaluated on shapes-grounding: ``omnifuse eval`` scores the grounding samples with
Acc@0.5 / mean IoU (per question type, with CIs) beside exact match for the describe questions, and an
untrained model's box-less answers score 0 without breaking anything."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from omnifuse.cli import console, main
from omnifuse.data.shapes_grounding import export_shapes_grounding
from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


@pytest.fixture(autouse=True)
def tiny_loading(monkeypatch):
    import omnifuse.tasks.generate.load as load

    real = load.load_model
    monkeypatch.setattr(
        load,
        "load_model",
        lambda run, progress=True, parts=None, **placement: real(run, False, make_parts(), **placement),
    )
    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=220))


def test_eval_of_a_grounding_run_prints_and_stores_acc_and_miou(tmp_path, capsys):
    files = export_shapes_grounding(tmp_path / "sg", {"train": 4, "test": 2}, progress=False)
    raw = tiny_recipe_dict(files["train"])
    raw["data"]["eval"] = str(files["test"])
    for stage in raw["stages"]:
        stage["steps"] = 2
    train(parse_recipe(raw), tmp_path / "run", parts=make_parts(), progress=False)
    assert main(["eval", str(tmp_path / "run"), "--no-progress", "--no-blind"]) == 0
    out = capsys.readouterr().out
    assert "grounding: accuracy at IoU ≥ 0.5 and mean IoU" in out and "grounded_caption" in out
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    grounding = summary["metrics"]["grounding"]
    assert set(grounding["per_type"]) == {"grounding", "grounded_caption"}
    assert set(summary["per_type"]) == {"grounding", "grounded_caption", "describe"}
    assert grounding["view"]["cut"] == 0  # the tiny encoder sees the whole image
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    boxes = [r for r in records if r["question_type"] != "describe"]
    assert boxes and all("iou" in r and 0.0 <= r["iou"] <= 1.0 for r in boxes)
    assert all("iou" not in r for r in records if r["question_type"] == "describe")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Grounding: accuracy at IoU ≥ 0.5 and mean IoU" in report
    assert "| question type | n | Acc@0.5 % | mIoU % | box parsed |" in report
