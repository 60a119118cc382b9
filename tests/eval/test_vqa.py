from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from omnifuse.cli import console, render
from omnifuse.data.jsonl import load_jsonl
from omnifuse.eval import runner
from omnifuse.eval.vqa import evaluate_vqa, exact_match, normalize_answer, reference_answers, without_media
from omnifuse.generation.engine import GenerationConfig
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR
from omnifuse.rundir import RunDir

QUICKSTART = RECIPES_DIR / "quickstart.yaml"


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Red.", "red"),
        ("  The Circle!", "circle"),
        ("a  rectangle", "rectangle"),
        ("YES", "yes"),
        ("an apple, the end", "apple end"),
    ],
)
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_is_not_substring_match():
    assert exact_match("Blue.", "blue")
    assert not exact_match("blue circle", "blue")
    assert not exact_match("", "no")


class FakeEngine:
    """Answers 'red' to everything; with the image removed it answers 'no'."""

    processor = SimpleNamespace(speech_to_text=None)  # no ASR cascade

    def generate(self, prompts, cfg):
        return ["red" if p.images() else "no" for p in prompts]


def test_evaluate_vqa_scores_and_groups(color_data):
    samples = load_jsonl(color_data)
    res = evaluate_vqa(FakeEngine(), samples, GenerationConfig(), batch_size=5, progress=False)
    reds = sum(s.answer() == "red" for s in samples)
    assert res.n == len(samples) and res.accuracy == pytest.approx(reds / len(samples))
    assert set(res.per_type) == {"color"}
    color = res.per_type["color"]
    assert color["accuracy"] == pytest.approx(reds / len(samples)) and color["n"] == len(samples)
    # 95 % bootstrap interval around the accuracy (one question type: the same as overall)
    lo, hi = res.ci95
    assert 0 <= lo < res.accuracy < hi <= 1 and color["ci95"] == [lo, hi]
    assert [p["score"] for p in res.predictions] == [float(s.answer() == "red") for s in samples]
    assert all(p["correct"] == (p["score"] == 1.0) for p in res.predictions)
    blind = evaluate_vqa(FakeEngine(), samples, GenerationConfig(), batch_size=5, blind=True, progress=False)
    assert blind.accuracy == 0.0


class EchoEngine:
    """Answers each prompt with its question's text (distinct per question) and counts what it was asked."""

    processor = SimpleNamespace(speech_to_text=None)

    def __init__(self) -> None:
        self.asked = 0

    def generate(self, prompts, cfg):
        self.asked += len(prompts)
        return [p.prompt()[-1].text() for p in prompts]


def test_blind_evaluation_asks_each_distinct_question_once(color_data):
    samples = load_jsonl(color_data)
    questions = {s.prompt()[-1].text() for s in samples}
    assert len(questions) < len(samples)  # the fixture repeats its questions over different images
    blind, seen = EchoEngine(), EchoEngine()
    res = evaluate_vqa(blind, samples, GenerationConfig(), batch_size=3, blind=True, progress=False)
    assert blind.asked == len(questions)
    # every sample still gets its own record, with the answer to its own question
    assert [p["id"] for p in res.predictions] == [s.id for s in samples]
    assert [p["prediction"] for p in res.predictions] == [s.prompt()[-1].text() for s in samples]
    # with the images every prompt is asked (its parts compare by path, not pixels); sampling asks all
    evaluate_vqa(seen, samples, GenerationConfig(), batch_size=3, progress=False)
    assert seen.asked == len(samples)
    sampled = EchoEngine()
    evaluate_vqa(
        sampled, samples, GenerationConfig(temperature=0.7), batch_size=3, blind=True, progress=False
    )
    assert sampled.asked == len(samples)


def test_without_media_keeps_text(color_data):
    s = load_jsonl(color_data)[0]
    b = without_media(s)
    assert not b.images() and b.answer() == s.answer() and len(b.messages) == len(s.messages)


def test_several_answers_use_the_vqav2_rule(color_data):
    samples = load_jsonl(color_data)[:3]
    # 3 of 10 annotators said "red" (0.9), 1 of 10 (0.3), a single answer: exact match (1 or 0)
    metas = [{"answers": ["red"] * 3 + ["maroon"] * 7}, {"answers": ["red"] + ["blue"] * 9}, {}]
    samples = [replace(s, meta={**s.meta, **m}) for s, m in zip(samples, metas, strict=True)]
    assert reference_answers(samples[1]) == ["red"] + ["blue"] * 9
    assert reference_answers(samples[2]) == [samples[2].answer()]
    res = evaluate_vqa(FakeEngine(), samples, GenerationConfig(), progress=False)
    single = float(samples[2].answer() == "red")
    assert [p["score"] for p in res.predictions] == pytest.approx([0.9, 0.3, single])
    assert res.accuracy == pytest.approx((0.9 + 0.3 + single) / 3)
    assert res.predictions[0]["answers"][0] == "red" and "answers" not in res.predictions[2]
    assert not res.predictions[0]["correct"]  # partial credit is not full credit


def test_evaluate_run_writes_confidence_intervals(color_data, tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copy(QUICKSTART, run.recipe_file)
    recipe = load_recipe(QUICKSTART, ["eval.blind=true"])
    monkeypatch.setattr(
        runner, "Engine", lambda model, processor, pruning=None, pack_weights=True: FakeEngine()
    )
    # No model here (a fake engine answers), so no weights or prompt for a manifest (tests/eval/test_manifest.py).
    monkeypatch.setattr(runner, "build_manifest", lambda *args: {})
    model = torch.nn.Linear(1, 1)  # only where the evaluation runs (the CPU: its threads are kept)
    outcome = runner.evaluate_run(run, data=str(color_data), progress=False, loaded=(recipe, model, None))
    saved = json.loads((run.path / "eval.json").read_text())
    lo, hi = saved["ci95"]
    assert lo < saved["accuracy"] < hi and saved["ci95"] == list(outcome.result.ci95)
    assert saved["per_type"]["color"]["ci95"] == [lo, hi]
    assert saved["blind"]["accuracy"] == 0.0 and saved["blind"]["ci95"] == [0.0, 0.0]
    records = [json.loads(line) for line in (run.path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == saved["n"] and all("score" in r for r in records)
    assert "95 % CI" in (run.path / "report.md").read_text()
    # the command line shows the interval next to the accuracy
    buffer = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buffer, width=200))
    render.print_scores(outcome)
    assert f"{100 * saved['accuracy']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]" in buffer.getvalue()
    assert "0.0 % [0.0, 0.0]" in buffer.getvalue()  # the blind column
