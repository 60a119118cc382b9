from __future__ import annotations

import pytest

from omnifuse.data.sample import load_jsonl
from omnifuse.eval.vqa import evaluate_vqa, exact_match, normalize_answer, without_media
from omnifuse.serve.engine import GenerationConfig


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

    def generate(self, prompts, cfg):
        return ["red" if p.images() else "no" for p in prompts]


def test_evaluate_vqa_scores_and_groups(color_data):
    samples = load_jsonl(color_data)
    res = evaluate_vqa(FakeEngine(), samples, GenerationConfig(), batch_size=5, progress=False)
    reds = sum(s.answer() == "red" for s in samples)
    assert res.n == len(samples) and res.accuracy == pytest.approx(reds / len(samples))
    assert res.per_type == {"color": {"accuracy": pytest.approx(reds / len(samples)), "n": len(samples)}}
    blind = evaluate_vqa(FakeEngine(), samples, GenerationConfig(), batch_size=5, blind=True, progress=False)
    assert blind.accuracy == 0.0


def test_without_media_keeps_text(color_data):
    s = load_jsonl(color_data)[0]
    b = without_media(s)
    assert not b.images() and b.answer() == s.answer() and len(b.messages) == len(s.messages)
