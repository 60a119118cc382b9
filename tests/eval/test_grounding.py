"""Grounding metrics: IoU on known boxes, Acc@0.5, grounded captions, malformed predictions scoring 0, and
the per-sample metric table choosing grounding by meta.task (or a box in the answer) inside evaluate_vqa."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.eval.grounding import grounding_scores, score_grounding
from omnifuse.eval.scoring import METRICS, metric_for, metric_tables
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import GenerationConfig
from omnifuse.tasks.generate.printout import score_table

REF = "<ref>the red circle</ref><box>(100,100),(300,300)</box>"


def _sample(sid: str, answer: str, **meta) -> Sample:
    messages = (
        Message("user", (ImagePart(image=_IMAGE), TextPart("q"))),
        Message("assistant", (TextPart(answer),)),
    )
    return Sample(sid, messages, meta)


_IMAGE = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8))


@pytest.mark.parametrize(
    "prediction, expected_iou",
    [
        (REF, 1.0),
        ("<box>(100,100),(300,300)</box>", 1.0),  # the phrase is not needed for a single box
        ("<ref>x</ref><box>(200,100),(400,300)</box>", 1 / 3),
        ("<box>(100,100),(200,200)</box>", 0.25),
        ("<box>(500,500),(600,600)</box>", 0.0),
        ("<box>(0,0),(5,5)</box><box>(100,100),(300,300)</box>", 0.0),  # the first box counts
    ],
)
def test_iou_and_hit_of_one_box(prediction, expected_iou):
    scores = grounding_scores(prediction, REF)
    assert scores["iou"] == pytest.approx(expected_iou)
    assert scores["hit"] == float(expected_iou >= 0.5)
    assert scores["parsed"]


@pytest.mark.parametrize(
    "prediction",
    ["", "the red circle", "<box>(100,100),(300", "<box>(100,100),(300,300)", "<box>(300,300),(100,100)</box>",
     "<box>(100,100),(300,3000)</box>", "<box>(a,b),(c,d)</box>", "<ref>the red circle</ref>", "\x00" * 50,
     "<box>" * 500 + "(" * 500],
)  # fmt: skip
def test_malformed_predictions_score_zero_and_never_raise(prediction):
    record = score_grounding(prediction, _sample("s", REF, task="grounding"))
    assert record["score"] == 0.0 and record["iou"] == 0.0 and record["correct"] is False


def test_a_grounded_caption_matches_boxes_by_phrase():
    ref = "<ref>a red circle</ref><box>(0,0),(100,100)</box><ref>a blue square</ref><box>(500,500),(700,700)</box>"
    swapped = "<ref>a blue square</ref><box>(500,500),(700,700)</box><ref>a red circle</ref><box>(0,0),(100,100)</box>"
    assert grounding_scores(swapped, ref) == {"iou": 1.0, "hit": 1.0, "parsed": True}
    half = "<ref>A red circle.</ref><box>(0,0),(100,100)</box><ref>a green square</ref><box>(500,500),(700,700)</box>"
    assert grounding_scores(half, ref)["hit"] == 0.5  # phrases compared as VQA answers: case, articles, dots


def test_the_metric_table_picks_grounding_by_task_or_by_a_box_in_the_answer():
    assert metric_for(_sample("a", REF, task="grounding")) is METRICS["grounding"]
    assert metric_for(_sample("b", REF)) is METRICS["grounding"]  # no task: a box in the answer decides
    assert metric_for(_sample("c", "a small red circle", task="vqa")) is None
    assert metric_for(_sample("d", REF, task="vqa")) is None  # an explicit task wins over the content
    assert metric_for(_sample("e", "red")) is None


class BoxEngine:
    """Answers each sample with a fixed text by id (the same with the image removed)."""

    processor = SimpleNamespace(speech_to_text=None)

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, cfg):
        return [self.answers[p.id] for p in prompts]


def test_evaluate_vqa_scores_grounding_and_vqa_samples_side_by_side():
    samples = [
        _sample("g1", REF, task="grounding", question_type="grounding"),
        _sample("g2", REF, task="grounding", question_type="grounding"),
        _sample("g3", REF, task="grounding", question_type="grounding"),
        _sample("d1", "a red circle", task="vqa", question_type="describe"),
    ]
    answers = {
        "g1": REF,
        "g2": "<box>(100,100),(200,200)</box>",
        "g3": "<box>(1,2),(3",
        "d1": "A red circle.",
    }
    result = evaluate_vqa(BoxEngine(answers), samples, GenerationConfig(), batch_size=2, progress=False)
    by_id = {p["id"]: p for p in result.predictions}
    assert by_id["g1"]["score"] == 1.0 and by_id["g1"]["iou"] == 1.0
    assert by_id["g2"]["score"] == 0.0 and by_id["g2"]["iou"] == pytest.approx(0.25)
    assert by_id["g3"]["score"] == 0.0 and by_id["g3"]["box_parsed"] is False
    assert by_id["d1"]["score"] == 1.0 and "iou" not in by_id["d1"]
    assert result.per_type["grounding"]["accuracy"] == pytest.approx(1 / 3)
    grounding = result.summary()["metrics"]["grounding"]
    assert grounding["all"]["n"] == 3 and set(grounding["per_type"]) == {"grounding"}
    assert grounding["all"]["acc@0.5"] == pytest.approx(1 / 3)
    assert grounding["all"]["miou"] == pytest.approx(1.25 / 3)
    low, high = grounding["all"]["miou_ci95"]
    assert low <= 1.25 / 3 <= high
    ((title, columns, rows),) = metric_tables(result.metrics)
    assert "IoU" in title and columns[2] == "Acc@0.5 %" and rows[0][0] == "all"
    printed = score_table(SimpleNamespace(result=result, blind=None, data="d"))
    assert any(getattr(t, "title", "") == title for t in printed)


def test_vqa_only_data_has_no_grounding_summary():
    samples = [_sample("v", "red", question_type="color")]
    result = evaluate_vqa(BoxEngine({"v": "red"}), samples, GenerationConfig(), batch_size=2, progress=False)
    assert "metrics" not in result.summary() and result.accuracy == 1.0


def test_a_centre_crop_that_cuts_reference_boxes_is_reported(tmp_path):
    from omnifuse.encoders.vision.cnn import kept_region

    image = tmp_path / "wide.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (400, 200)).save(image)

    def grounded(sid, answer):
        messages = (
            Message("user", (ImagePart(image), TextPart("q"))),
            Message("assistant", (TextPart(answer),)),
        )
        return Sample(sid, messages, {"task": "grounding", "question_type": "grounding"})

    samples = [
        grounded("edge", "<ref>a</ref><box>(0,0),(100,100)</box>"),  # the left edge: outside the centre crop
        grounded("centre", "<ref>b</ref><box>(400,400),(600,600)</box>"),
    ]
    answers = {"edge": samples[0].answer(), "centre": samples[1].answer()}

    def model(crop: bool):
        region = lambda w, h: kept_region(w, h, 64, 73 if crop else None)  # noqa: E731
        return SimpleNamespace(encoders={"image": SimpleNamespace(input_region=region)})

    engine = BoxEngine(answers)
    engine.model = model(crop=True)
    result = evaluate_vqa(engine, samples, GenerationConfig(), batch_size=2, progress=False)
    assert result.metrics["grounding"]["view"] == {"boxes": 2, "cut": 1, "outside": 1}
    ((title, _, _),) = metric_tables(result.metrics)
    assert "warning: 1 of 2 reference boxes" in title and "crop: false" in title
    engine.model = model(crop=False)
    result = evaluate_vqa(engine, samples, GenerationConfig(), batch_size=2, progress=False)
    assert result.metrics["grounding"]["view"]["cut"] == 0
    assert "warning" not in metric_tables(result.metrics)[0][0]
