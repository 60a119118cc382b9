"""COCO-captions conversion: one caption sample per image with all its captions, strict errors, the CLI verb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnifuse.data.coco_captions import from_coco_captions
from omnifuse.data.converters import convert
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart
from omnifuse.errors import OmnifuseError

COCO = {
    "info": {},
    "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "sub/b.jpg"}],
    "annotations": [
        {"image_id": 9, "id": 1, "caption": "A dog  on a sofa."},
        {"image_id": 7, "id": 2, "caption": "two cats"},
        {"image_id": 9, "id": 3, "caption": "a brown dog lying down"},
    ],
}


def _write(tmp_path: Path, data, images=("a.jpg", "sub/b.jpg")) -> Path:
    for name in images:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    src = tmp_path / "captions_val.json"
    src.write_text(json.dumps(data), encoding="utf-8")
    return src


def test_one_sample_per_image_with_every_caption(tmp_path):
    samples = from_coco_captions(_write(tmp_path, COCO))
    assert [s.id for s in samples] == ["coco-7", "coco-9"]
    dog = samples[1]
    assert dog.meta == {
        "task": "caption",
        "image_id": 9,
        "captions": ["A dog on a sofa.", "a brown dog lying down"],
    }
    assert dog.answer() == "A dog on a sofa."  # the first caption is the training target
    assert isinstance(dog.messages[0].parts[0], ImagePart) and dog.images() == [tmp_path / "sub" / "b.jpg"]
    each = from_coco_captions(tmp_path / "captions_val.json", each_caption=True)
    assert [s.id for s in each] == ["coco-7-2", "coco-9-1", "coco-9-3"]
    assert each[2].answer() == "a brown dog lying down" and each[2].meta["captions"] == dog.meta["captions"]


def test_convert_verb_writes_loadable_jsonl(tmp_path):
    out = tmp_path / "out" / "val.jsonl"
    assert convert("coco-captions", _write(tmp_path, COCO), out) == 2
    loaded = load_jsonl(out)
    assert loaded[1].meta["captions"] == ["A dog on a sofa.", "a brown dog lying down"]
    assert loaded[1].images()[0].is_file()


def test_every_problem_is_reported_at_once(tmp_path):
    bad = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 7, "file_name": "c.jpg"}, {"file_name": "d.jpg"},
                   {"id": 8, "file_name": "missing.jpg"}, {"id": 9, "file_name": "sub/b.jpg"}],
        "annotations": [{"image_id": 7, "caption": "ok"}, {"image_id": 5, "caption": "who?"},
                        {"image_id": 7, "caption": " "}, {"image_id": 8, "caption": "fine"}],
    }  # fmt: skip
    with pytest.raises(OmnifuseError) as err:
        from_coco_captions(_write(tmp_path, bad))
    text = str(err.value)
    for expected in ("appears twice", "images[2]: needs an id", "annotations[1]: image_id 5 is not in images",
                     "annotations[2]: needs a non-empty caption", "image 9 has no caption", "missing.jpg"):  # fmt: skip
        assert expected in text
    with pytest.raises(OmnifuseError, match="needs the lists 'images' and 'annotations'"):
        from_coco_captions(_write(tmp_path, [{"image_id": 1}]))
