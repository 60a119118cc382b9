"""Caption metrics against values computed by hand on a two-image corpus, and the caption task's wiring."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.eval.captioning import (
    CiderD,
    caption_references,
    caption_scores,
    caption_table,
    rouge_l,
    score_caption,
    summarise_captions,
)
from omnifuse.eval.metrics import cider_d

# Image A is captioned exactly; image B gets the wrong shape.
HYPS = ["A small red circle.", "a big blue circle"]
REFS = [["a small red circle"], ["a big blue square"]]


def test_bleu4_by_hand():
    # 8 hypothesis words, 8 reference words: brevity penalty 1.
    # 1-grams: A 4/4, B 3/4 ("circle" misses) -> 7/8;  2-grams: A 3/3, B 2/3 -> 5/6
    # 3-grams: A 2/2, B 1/2 -> 3/4;                     4-grams: A 1/1, B 0/1 -> 1/2
    # BLEU-4 = 100 · (7/8 · 5/6 · 3/4 · 1/2)^(1/4) = 100 · (105/384)^(1/4) = 72.31
    expected = 100 * (7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25
    assert caption_scores(HYPS, REFS, n_resamples=50).bleu4 == pytest.approx(expected)


def test_cider_d_by_hand():
    # N = 2 images. "a" is in both references: idf = log 2 − log 2 = 0. Every other n-gram has
    # df = 1 (or 0 for n-grams only in a hypothesis, clipped to 1): idf = log 2 =: L.
    # A (exact): per order the vectors are equal -> cosine 1 for n = 1..4; equal lengths -> penalty 1;
    #   CIDEr-D(A) = 10 · (1 + 1 + 1 + 1) / 4 = 10.
    # B: n=1 {big, blue, circle} vs {big, blue, square} (weights L, "a" weighs 0): 2L² / (√3L · √3L) = 2/3
    #    n=2 {a big, big blue, blue circle} vs {a big, big blue, blue square}: 2/3
    #    n=3 {a big blue, big blue circle} vs {a big blue, big blue square}: 1/2;  n=4: 0
    #   CIDEr-D(B) = 10 · (2/3 + 2/3 + 1/2 + 0) / 4 = 10 · 11/24 = 4.583
    # corpus = (10 + 110/24) / 2 = 350/48 = 7.2917
    res = caption_scores(HYPS, REFS, n_resamples=50)
    assert res.cider_d == pytest.approx(350 / 48)
    assert res.cider_per_image == pytest.approx([10.0, 110 / 24])


def test_rouge_l_by_hand():
    # A: LCS 4 of 4 -> P = R = 1 -> F = 1.  B: LCS "a big blue" = 3 -> P = R = 3/4 -> F = 3/4.
    res = caption_scores(HYPS, REFS, n_resamples=50)
    assert res.rouge_per_image == pytest.approx([1.0, 0.75])
    assert res.rouge_l == pytest.approx(0.875)
    # Several references: precision and recall are maxed separately (pycocoevalcap's Rouge).
    # vs "a big blue square": LCS "a blue" = 2 -> P 2/3, R 2/4;  vs "blue circle": LCS 2 -> P 2/3, R 2/2.
    # P = 2/3, R = 1, β = 1.2: F = 2.44 · (2/3) / (1 + 1.44 · 2/3) = 1.62667 / 1.96 = 0.82993
    f = rouge_l("a blue circle", ["a big blue square", "blue circle"])
    assert f == pytest.approx((1 + 1.44) * (2 / 3) / (1 + 1.44 * 2 / 3))
    assert rouge_l("red", ["a blue square"]) == 0.0


def test_sparse_cider_equals_the_reference_implementation_and_resamples():
    rng = np.random.default_rng(0)
    words = "a red blue green circle square triangle big small the shape".split()
    hyps = [" ".join(rng.choice(words, rng.integers(2, 7))) for _ in range(12)]
    refs = [
        [" ".join(rng.choice(words, rng.integers(2, 7))) for _ in range(rng.integers(1, 4))] for _ in hyps
    ]
    sparse_cider = CiderD(hyps, refs)
    assert sparse_cider.per_image() == pytest.approx(cider_d(hyps, refs).per_sample)
    # A resample with repeats is the plain CIDEr-D of the repeated list (document frequencies count repeats).
    pick = [0, 0, 3, 5, 5, 5, 11]
    direct = cider_d([hyps[i] for i in pick], [refs[i] for i in pick]).score
    assert sparse_cider.score_of(np.asarray(pick)) == pytest.approx(direct)


def test_intervals_hold_the_estimate_and_are_seeded():
    hyps = [*HYPS, "a green triangle", "a red square", "a shape"]
    refs = [*REFS, ["a green triangle"], ["a small red square"], ["a big green circle"]]
    one, two = caption_scores(hyps, refs, n_resamples=200), caption_scores(hyps, refs, n_resamples=200)
    for name, (low, high) in one.ci95.items():
        assert low <= getattr(one, name) <= high and low < high, name
    assert two.ci95 == one.ci95  # seed 0: the same intervals every time


def test_caption_task_reads_meta_captions_or_the_answer():
    def sample(i, meta, answer="a red circle"):
        msgs = (Message("user", (ImagePart("x.png"),)), Message("assistant", (TextPart(answer),)))
        return Sample(f"c{i}", msgs, {"task": "caption", **meta})

    assert caption_references(sample(0, {"captions": ["one", "two"]})) == ["one", "two"]
    assert caption_references(sample(1, {})) == ["a red circle"]
    with pytest.raises(OmnifuseError, match="no reference"):
        caption_references(sample(2, {}, answer=" "))
    # Per sample: exact match after normalisation (the accuracy column) and ROUGE-L.
    hit = score_caption("A red circle.", sample(3, {}))
    assert hit["correct"] and hit["score"] == 1.0 and hit["rouge_l"] == 1.0
    miss = score_caption("a blue circle", sample(4, {"captions": ["a blue square", "a red circle"]}))
    assert not miss["correct"] and miss["caption_references"] == ["a blue square", "a red circle"]
    # Over the records: only caption records count (a VQA record has no caption_references).
    records = [
        {"prediction": h, **score_caption(h, sample(5 + k, {"captions": r}))}
        for k, (h, r) in enumerate(zip(HYPS, REFS, strict=True))
    ]
    summary = summarise_captions([*records, {"prediction": "red", "score": 1.0}])
    assert summary["n"] == 2 and summary["cider_d"] == pytest.approx(350 / 48)
    assert summarise_captions([{"prediction": "red", "score": 1.0}]) is None
    title, columns, rows = caption_table(summary)
    assert [r[0] for r in rows] == ["BLEU-4", "CIDEr-D (×100)", "ROUGE-L (×100)", "exact match %"]
    assert rows[1][1].startswith("729.2 [")
    assert rows[3][1].startswith("50.0 [") and "by definition" not in rows[0][1]


def test_exact_match_and_captions_too_short_for_bleu4():
    # Image A is exact (after normalisation), B is not: exact match 1/2.
    assert caption_scores(HYPS, REFS, n_resamples=50).exact == 0.5
    # Three-word captions have no 4-gram: BLEU-4 is 0 even for perfect ones, and the table says why.
    short = caption_scores(["a red circle", "a blue square"], [["a red circle"], ["a blue square"]], 50)
    assert short.bleu4 == 0.0 and short.exact == 1.0 and not short.bleu4_defined
    _, _, rows = caption_table(short.summary())
    assert rows[0][1].endswith("(no caption has 4 words: 0 by definition)")
    assert rows[3][1] == "100.0 [100.0, 100.0]"
    # A summary written before these fields (an older eval.json) still renders, without the new row.
    old = {k: v for k, v in short.summary().items() if not k.startswith(("exact", "bleu4_defined"))}
    assert [r[0] for r in caption_table(old)[2]] == ["BLEU-4", "CIDEr-D (×100)", "ROUGE-L (×100)"]
