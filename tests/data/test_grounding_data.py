"""shapes-grounding (exact boxes, unique phrases, the three kinds of sample) and the RefCOCO converter."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnifuse.cli import main
from omnifuse.data.boxes import denormalise, first_box, parse_grounding
from omnifuse.data.converters import convert
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.refcoco import from_refcoco
from omnifuse.data.shapes_grounding import (
    BACKGROUND,
    RELATIONS,
    SIDE,
    _related,
    draw_scene,
    random_scene,
    referring_phrase,
)
from omnifuse.errors import OmnifuseError


def test_drawn_shapes_fill_exactly_their_boxes():
    rng = random.Random(0)
    for _ in range(30):
        scene = random_scene(rng)
        pixels = np.asarray(draw_scene(scene))
        for s in scene:
            left, top, right, bottom = s.box
            painted = (pixels[top - 1 : bottom + 1, left - 1 : right + 1] != BACKGROUND).any(-1)
            ys, xs = np.nonzero(painted)
            assert (xs.min() + left - 1, ys.min() + top - 1, xs.max() + left, ys.max() + top) == s.box


def _referents(phrase: str, scene) -> list:
    """The shapes of ``scene`` that ``phrase`` describes, read back from its words."""
    words = phrase.removeprefix("the ")
    relation = next((r for r in RELATIONS if f" {r} the " in words), None)
    own, anchor_shape = words.split(f" {relation} the ") if relation else (words, None)
    attrs = own.split(" ")
    fits = [s for s in scene if all(w in (s.size, s.color, s.shape) for w in attrs) and s.shape == attrs[-1]]
    if relation is None:
        return fits
    (anchor,) = [a for a in scene if a.shape == anchor_shape]  # anchors are unique by their kind
    return [s for s in fits if s is not anchor and _related(s, anchor, relation)]


def test_phrases_pick_out_one_shape():
    rng = random.Random(1)
    relational = 0
    for _ in range(300):
        scene = random_scene(rng)
        for s in scene:
            phrase = referring_phrase(s, scene, rng)
            if phrase is None:
                continue
            relational += any(f" {r} the " in phrase for r in RELATIONS)
            assert _referents(phrase, scene) == [s], phrase
    assert relational > 100  # "the small red circle left of the triangle" is common


def test_export_writes_three_kinds_and_the_cli_reports_the_files(tmp_path, capsys):
    out = tmp_path / "sg"
    assert (
        main(["data", "shapes-grounding", "--out", str(out), "--train", "6", "--test", "3", "--no-progress"])
        == 0
    )
    assert "train.jsonl" in capsys.readouterr().out
    train = load_jsonl(out / "train.jsonl")
    kinds = {s.meta["question_type"] for s in train}
    assert kinds == {"grounding", "describe", "grounded_caption"}
    for s in train:
        if s.meta["task"] == "grounding":
            box = first_box(s.answer())
            image = Image.open(s.images()[0])
            assert image.size == (SIDE, SIDE)
            left, top, right, bottom = (round(v) for v in denormalise(box, SIDE, SIDE))
            crop = np.asarray(image.convert("RGB"))[top:bottom, left:right]
            assert (crop != BACKGROUND).any(-1).mean() > 0.4  # the box holds its shape
            assert parse_grounding(s.answer())[0].phrase == s.meta["phrase"]
    assert len(load_jsonl(out / "test.jsonl")) >= 3 * 3


def _image(path: Path, size=(200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def test_refcoco_flat_and_refer_layouts(tmp_path):
    _image(tmp_path / "imgs" / "a.jpg")
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([
        {"image": "a.jpg", "bbox": [20, 10, 100, 50], "sentences": [{"sent": "left dog"}, {"sent": "the dog"}],
         "ref_id": 7, "split": "val"},
        {"file_name": "a.jpg", "bbox_xyxy": [0, 0, 200, 100], "sent": "everything", "width": 200, "height": 100},
    ]))  # fmt: skip
    samples = from_refcoco(flat, tmp_path / "imgs")
    assert len(samples) == 3
    first = samples[0]
    assert first.answer() == "<ref>left dog</ref><box>(100,100),(600,600)</box>"
    assert first.prompt()[0].text() == "Give the box of left dog."
    assert first.meta["task"] == "grounding" and first.meta["split"] == "val"
    assert samples[2].answer().endswith("<box>(0,0),(999,999)</box>")

    refer = tmp_path / "imgs" / "refs.json"
    refer.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 5, "image_id": 1, "bbox": [20, 10, 100, 50]}],
        "refs": [{"ref_id": 3, "ann_id": 5, "image_id": 1, "sentences": [{"sent": "left dog"}], "split": "testA"}],
    }))  # fmt: skip
    out = tmp_path / "out" / "refcoco.jsonl"
    assert convert("refcoco", refer, out) == 1
    (loaded,) = load_jsonl(out)
    assert loaded.answer() == first.answer() and loaded.meta["split"] == "testA"


def test_refcoco_problems_are_listed_together(tmp_path):
    _image(tmp_path / "a.jpg")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"image": "a.jpg", "bbox": [1, 2, 3], "sent": "x"},
        {"image": "a.jpg", "bbox": [1, 2, 3, 4]},
        {"image": "gone.jpg", "bbox": [1, 2, 3, 4], "sent": "y"},
        {"image": "a.jpg", "bbox": [1, 2, 0, 4], "sent": "z"},
    ]))  # fmt: skip
    with pytest.raises(OmnifuseError) as err:
        from_refcoco(bad)
    text = str(err.value)
    assert "entry 0: bbox: must be a list of 4 numbers" in text
    assert "entry 1" in text and "missing the expression" in text
    assert "gone.jpg" in text and "entry 3: bbox: has no area" in text


def test_refcoco_through_the_cli_bad_input_is_one_paragraph(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    assert main(["data", "convert", "refcoco", str(bad), "--out", str(tmp_path / "o.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "annotations" in err and "Traceback" not in err
