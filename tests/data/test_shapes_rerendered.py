"""shapes-rerendered: easy-vqa's questions over shapes drawn differently (seeded, answers true to the image)."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
from easy_vqa import get_answers, get_test_questions
from PIL import Image

from omnifuse.cli import main
from omnifuse.data.shapes_rerendered import COLORS, _ask, answer, export_shapes_rerendered, templates
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError


def test_templates_answer_easy_vqas_own_questions_as_easy_vqa_does():
    """Every template, filled in as easy-vqa filled it, gets easy-vqa's answer from the image's shape and
    colour (read from the same image's shape and colour questions)."""
    pool = {t.text: t for t in templates()}
    assert len(pool) == 24 and {t.kind for t in pool.values()} == {"yes/no", "color", "shape"}
    texts, answers, image_ids = get_test_questions()
    truth: dict[int, dict[str, str]] = defaultdict(dict)
    for _text, a, i in zip(texts, answers, image_ids, strict=True):
        if a in COLORS:
            truth[i]["color"] = a
        elif a in ("circle", "rectangle", "triangle"):
            truth[i]["shape"] = a
    checked = 0
    for text, expected, image in zip(texts, answers, image_ids, strict=True):
        if len(truth[image]) < 2:
            continue
        words = text.rstrip("?").split()
        for template in pool.values():
            slot_word = next(
                (w for w in words if w in COLORS or w in ("circle", "rectangle", "triangle")), None
            )
            filled = template.text.format(**{template.slot: slot_word}) if template.slot else template.text
            if filled == text:
                assert answer(template, truth[image]["shape"], truth[image]["color"], slot_word) == expected
                checked += 1
    assert checked > 5000


def test_yes_no_questions_name_a_present_thing_as_often_as_easy_vqas_do():
    """easy-vqa names a colour that is drawn in 1 of 8 yes/no colour questions, a shape in 1 of 3; the
    re-rendered set's wording prior must be the same, or the check measures the prior, not the renderer."""
    pool = {t.text: t for t in templates()}
    shapes = ("circle", "rectangle", "triangle")
    theirs: dict[str, list[bool]] = defaultdict(list)
    for texts, answers, _ in (get_test_questions(),):
        for text, reply in zip(texts, answers, strict=True):
            if reply not in ("yes", "no"):
                continue
            word = next(w for w in text.rstrip("?").split() if w in COLORS or w in shapes)
            slot = "color" if word in COLORS else "shape"
            template = pool[text.replace(word, "{" + slot + "}")]
            theirs[slot].append((reply == "yes") != template.negated)
    rng = random.Random(0)
    for slot, template in (
        ("color", pool["is there a {color} shape?"]),
        ("shape", pool["is there a {shape}?"]),
    ):
        ours = [_ask(template, "circle", "red", rng) in ("circle", "red") for _ in range(4000)]
        their_share = sum(theirs[slot]) / len(theirs[slot])
        assert abs(sum(ours) / len(ours) - their_share) < 0.03, (slot, their_share)


def _export(path, n=24, seed=0):
    return export_shapes_rerendered(path, n=n, seed=seed, progress=False)["test"]


def test_same_seed_same_set_other_seed_other_set(tmp_path):
    a, b, c = _export(tmp_path / "a"), _export(tmp_path / "b"), _export(tmp_path / "c", seed=1)
    assert a.read_text() == b.read_text()
    assert a.read_text() != c.read_text()
    for image in sorted((tmp_path / "a" / "images").iterdir()):
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()


def _painted(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Pixels nearer the shape's colour than half the minimum background distance."""
    return np.linalg.norm(pixels.astype(float) - np.asarray(rgb, float), axis=-1) < 75


def test_answers_are_easy_vqa_words_true_to_the_drawn_shape(tmp_path):
    samples = load_data(str(_export(tmp_path / "rr", n=60)))
    vocabulary = set(get_answers())
    fill = {"circle": (0.7, 0.87), "rectangle": (0.9, 1.1), "triangle": (0.4, 0.6)}  # of the box: π/4, 1, 1/2
    kinds = set()
    for s in samples:
        m = s.meta
        kinds.add(m["question_type"])
        assert s.answer() in vocabulary
        if m["question_type"] == "color":
            assert s.answer() == m["color"]
        elif m["question_type"] == "shape":
            assert s.answer() == m["shape"]
        else:  # the asked word is in the question; the answer follows from the recorded shape and colour
            question = s.messages[0].text()
            assert question == m["template"].format(**{m["template"].split("{")[1].split("}")[0]: m["asked"]})
            negated = any(w in ("not", "no") for w in m["template"].split())
            present = m["asked"] in (m["shape"], m["color"])
            assert (s.answer() == "yes") == (present != negated)
        pixels = np.asarray(Image.open(s.images()[0]).convert("RGB"))
        side = m["image_size"]
        assert pixels.shape == (side, side, 3)
        left, top, right, bottom = m["box"]
        assert 0 <= left and 0 <= top and right <= side and bottom <= side  # the whole shape is inside
        painted = _painted(pixels, COLORS[m["color"]])
        assert not painted[[0, 0, -1, -1], [0, -1, 0, -1]].any()  # one pixel of margin; the background is
        assert painted.sum() > 0  # never near the shape's colour, and the shape is there
        if m["rotation"] == 0 and m["extent_px"] >= 20:  # the painted area over its box tells the shape
            area = painted.sum() / ((right - left) * (bottom - top))
            low, high = fill[m["shape"]]
            assert low <= area <= high, (s.id, m["shape"], area)
    assert kinds == {"yes/no", "color", "shape"}


def test_cli_writes_a_set_the_eval_reads_and_refuses_no_questions(tmp_path, capsys):
    out = tmp_path / "rr"
    assert (
        main(["data", "shapes-rerendered", "--out", str(out), "--n", "5", "--seed", "3", "--no-progress"])
        == 0
    )
    assert "test.jsonl" in capsys.readouterr().out
    samples = load_data(str(out / "test.jsonl"))
    assert len(samples) == 5 and all(s.meta["question_type"] for s in samples)
    assert all(p.is_file() for s in samples for p in s.images())
    assert (
        main(["data", "shapes-rerendered", "--out", str(tmp_path / "none"), "--n", "0", "--no-progress"]) != 0
    )
    with pytest.raises(OmnifuseError, match="at least one question"):
        export_shapes_rerendered(tmp_path / "none", n=0, progress=False)
