"""eval.after_stage: a multi-task run records each task's own metric after every stage (RUN/stage_eval.jsonl),
the reports show the stage × task table, and a resumed run writes no stage twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnifuse.eval.html import write_html_report
from omnifuse.eval.runner import evaluate_run
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training import loop
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict, write_color_dataset

BOX = "<ref>the shape</ref><box>(0,0),(999,999)</box>"


def _with_tasks(vqa: Path, out: Path) -> Path:
    """Caption and grounding samples on the colour images (meta.task caption / grounding)."""
    rows = []
    for line in vqa.read_text().splitlines():
        s = json.loads(line)
        image = s["messages"][0]["content"][0]
        colour = s["messages"][1]["content"][0]["text"]
        for task, prompt, answer in (("caption", "describe the image.", f"a {colour} square"),
                                     ("grounding", "where is the shape?", BOX)):  # fmt: skip
            rows.append({"id": f"{s['id']}-{task}", "meta": {"task": task, "question_type": task},
                         "messages": [{"role": "user", "content": [image, {"type": "text", "text": prompt}]},
                                      {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})  # fmt: skip
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture
def mixed(tmp_path) -> tuple[dict, Path]:
    vqa = write_color_dataset(tmp_path / "colors", n=12)
    others = _with_tasks(vqa, vqa.parent / "others.jsonl")
    every = vqa.parent / "all.jsonl"
    every.write_text(vqa.read_text() + others.read_text())
    raw = tiny_recipe_dict(vqa)
    raw["data"]["eval"] = str(every)
    raw["eval"] |= {"during_limit": 18}
    # Stage 2 mixes tasks: eval.after_stage is on by default.
    raw["stages"][1]["data"] = [{"source": str(vqa), "weight": 0.5}, {"source": str(others), "weight": 0.5}]
    return raw, tmp_path


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "stage_eval.jsonl").read_text().splitlines()]


def test_each_stage_records_each_tasks_metric_and_the_reports_show_them(mixed):
    raw, tmp = mixed
    recipe = parse_recipe(raw)
    assert recipe.evaluates_stages()
    train(recipe, tmp / "run", parts=make_parts(), progress=False)
    rows = _rows(tmp / "run")
    assert [(r["stage"], r["stage_index"], r["step"]) for r in rows] == [("align", 0, 4), ("instruct", 1, 4)]
    for r in rows:
        assert r["n"] == 18 and set(r["tasks"]) == {"vqa", "caption", "grounding"}
        vqa, cap, box = r["tasks"]["vqa"], r["tasks"]["caption"], r["tasks"]["grounding"]
        assert vqa["metric"] == "vqa" and 0 <= vqa["accuracy"] <= 1 and len(vqa["accuracy_ci95"]) == 2
        assert cap["metric"] == "caption" and {"cider_d", "bleu4", "rouge_l", "cider_d_ci95"} <= set(cap)
        assert box["metric"] == "grounding" and {"acc@0.5", "miou", "miou_ci95"} <= set(box)
        assert vqa["n"] + cap["n"] + box["n"] == 18

    run = RunDir(tmp / "run")
    loaded = load_model(run, progress=False, parts=make_parts())
    evaluate_run(run, progress=False, loaded=loaded)
    report = (run.path / "report.md").read_text()
    assert "## Per-task metrics after each stage" in report
    assert "| stage | caption | grounding | vqa |" in report
    assert "| align (step 4) | CIDEr-D " in report and "| instruct (step 4) | CIDEr-D " in report
    assert "Acc@0.5 " in report and "mIoU " in report
    html = write_html_report(run, loaded=loaded, samples=2, explained=0, progress=False).read_text()
    assert 'id="stage-eval-table"' in html and "instruct (step 4)" in html


def test_off_by_switch_and_without_a_mixture(mixed):
    raw, tmp = mixed
    raw["eval"] |= {"after_stage": False}
    assert not parse_recipe(raw).evaluates_stages()
    plain = tiny_recipe_dict(Path(raw["data"]["train"]))
    assert not parse_recipe(plain).evaluates_stages()  # one source per stage: off unless asked
    plain["eval"] = {"after_stage": True}
    assert parse_recipe(plain).evaluates_stages()


def test_a_resumed_run_writes_each_stage_once(mixed, monkeypatch):
    raw, tmp = mixed
    recipe = parse_recipe(raw)
    real = loop.Trainer._record

    def crash(self, stage, step, record):  # killed in stage 2 after its step-2 checkpoint
        if stage.name == "instruct" and step == 3:
            raise KeyboardInterrupt
        real(self, stage, step, record)

    monkeypatch.setattr(loop.Trainer, "_record", crash)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp / "run", parts=make_parts(), progress=False)
    assert [r["stage"] for r in _rows(tmp / "run")] == ["align"]
    # A row written after the checkpoint (a kill between the evaluation and the save) is dropped on resume.
    stale = _rows(tmp / "run")[0] | {"stage": "instruct", "stage_index": 1}
    with (tmp / "run" / "stage_eval.jsonl").open("a") as fh:
        fh.write(json.dumps(stale) + "\n")
    monkeypatch.setattr(loop.Trainer, "_record", real)
    train(recipe, tmp / "run", resume=True, parts=make_parts(), progress=False)
    rows = _rows(tmp / "run")
    assert [(r["stage"], r["stage_index"]) for r in rows] == [("align", 0), ("instruct", 1)]


def test_stage_data_evaluates_each_named_set_side_by_side(mixed):
    raw, tmp = mixed
    vqa = Path(raw["data"]["train"])
    others = vqa.parent / "others.jsonl"
    raw["stages"][1].pop("data")  # no mixture: the switch turns it on
    raw["eval"] |= {"after_stage": True, "during_limit": 5, "stage_data": [str(vqa), str(others)]}
    train(parse_recipe(raw), tmp / "run", parts=make_parts(), progress=False)
    rows = _rows(tmp / "run")
    assert len(rows) == 2
    for r in rows:  # 5 of the VQA file, 5 of the caption + grounding file
        assert r["n"] == 10 and r["tasks"]["vqa"]["n"] == 5
        assert r["tasks"]["caption"]["n"] + r["tasks"]["grounding"]["n"] == 5


def test_stage_data_needs_the_evaluation_on(mixed):
    from omnifuse.errors import OmnifuseError

    raw, _ = mixed
    raw["eval"] |= {"after_stage": False, "stage_data": [raw["data"]["eval"]]}
    with pytest.raises(OmnifuseError, match="eval.stage_data"):
        parse_recipe(raw)
