"""Captions derived from VQA facts: which facts count, partial images dropped, contradictions refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnifuse.data.captions import captions_from_vqa
from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError


def qa(i: int, image: str, question: str, answer: str, image_id: int | None = None) -> Sample:
    messages = (
        Message("user", (ImagePart(Path(image)), TextPart(question))),
        Message("assistant", (TextPart(answer),)),
    )
    return Sample(f"q{i}", messages, {"image_id": image_id} if image_id is not None else {})


def test_facts_from_questions_and_answers(tmp_path):
    samples = [
        qa(0, "a.png", "what color is the triangle?", "red", 7),  # colour answer + presupposed shape
        qa(1, "b.png", "is there not a blue shape?", "no"),  # negated + no → blue
        qa(2, "b.png", "does the image contain a circle?", "yes"),
        qa(3, "b.png", "is there a red shape?", "no"),  # absent: says nothing
        qa(4, "c.png", "what shape is in the image?", "rectangle"),  # colour never revealed
        qa(5, "d.png", "is no green shape present?", "no"),
        qa(6, "d.png", "what is the green shape?", "triangle"),
        qa(7, "d.png", "is there a rectangle in the image?", "no"),
    ]
    caps = captions_from_vqa(samples)
    assert [(c.id, c.answer(), c.images()) for c in caps] == [
        ("image-7", "a red triangle", [Path("a.png")]),
        ("image-1", "a blue circle", [Path("b.png")]),
        ("image-3", "a green triangle", [Path("d.png")]),
    ]
    assert dict(caps[0].meta) == {"task": "caption", "color": "red", "shape": "triangle", "image_id": 7}
    # Native format: a user turn with only the image, an assistant turn with the caption; it round-trips.
    (tmp_path / "a.png").write_bytes(b"")
    moved = [Sample(c.id, (Message("user", (ImagePart(tmp_path / "a.png"),)), c.messages[1])) for c in caps]
    assert [s.answer() for s in load_jsonl(write_jsonl(moved, tmp_path / "c.jsonl"))] == [
        c.answer() for c in caps
    ]


def test_contradicting_facts_are_refused():
    samples = [
        qa(0, "a.png", "what color is the shape?", "red"),
        qa(1, "a.png", "is there a blue shape?", "yes"),
    ]
    with pytest.raises(OmnifuseError, match="q1.*color of a.png is blue.*red"):
        captions_from_vqa(samples)
