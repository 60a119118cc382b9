"""Every metric against values computed by hand (or, for CIDEr-D's larger case, by separate dense code)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from omnifuse.errors import OmnifuseError
from omnifuse.eval.metrics import (
    bleu_from_stats,
    caption_tokens,
    cider_d,
    classification_scores,
    corpus_bleu,
    image_text_retrieval,
    recall_at_k,
    vqa_score,
    word_error_rate,
)


# ------------------------------------------------------------------ VQA
def test_vqa_single_answer_is_normalised_exact_match():
    assert vqa_score("The Dog.", "dog") == 1.0
    assert vqa_score("dog", ["dog"]) == 1.0
    assert vqa_score("big dog", "dog") == 0.0


@pytest.mark.parametrize(
    "matching, expected",
    [
        # 10 answers, k of them the prediction. Leave-one-out subsets of 9: leaving out a matching answer
        # leaves k-1 matches, leaving out another leaves k; each subset scores min(matches / 3, 1).
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, 1.0),  # every subset keeps >= 3 matches
        (10, 1.0),
    ],
)
def test_vqa_ten_answer_rule(matching, expected):
    answers = ["Two."] * matching + ["three"] * (10 - matching)
    assert vqa_score("two", answers) == pytest.approx(expected)


def test_vqa_rule_with_four_answers():
    # one match of 4: leaving it out -> 0; leaving out any of the other 3 -> 1/3. Mean (0 + 3/3) / 4.
    assert vqa_score("red", ["red", "blue", "green", "blue"]) == pytest.approx(0.25)


def test_vqa_needs_an_answer():
    with pytest.raises(OmnifuseError):
        vqa_score("red", [])


# ------------------------------------------------------------------ BLEU
def test_bleu_by_hand():
    # hypothesis "the cat sat on mat" (5 words) against "the cat sat on the mat" (6 words):
    # 1-grams 5/5, 2-grams 3/4 (not "on mat"), 3-grams 2/3, 4-grams 1/2; geometric mean (1·¾·⅔·½)^¼ = ¼^¼;
    # brevity penalty exp(1 − 6/5).
    expected = 100 * math.exp(1 - 6 / 5) * 0.25**0.25  # 57.89
    res = corpus_bleu(["the cat sat on mat"], ["the cat sat on the mat"])
    assert res.score == pytest.approx(expected, abs=1e-9)
    assert res.stats.tolist() == [[5, 6, 5, 3, 2, 1, 5, 4, 3, 2]]
    assert corpus_bleu(["a b c d e"], [["x", "a b c d e"]]).score == pytest.approx(100.0)


def test_bleu_stats_add_up_to_the_corpus_score():
    hyps = ["the cat sat on mat", "a dog runs", "one two three four five six"]
    refs = [["the cat sat on the mat"], ["a dog runs fast", "the dog runs"], ["one two three four six"]]
    res = corpus_bleu(hyps, refs)
    assert bleu_from_stats(res.stats) == pytest.approx(res.score)
    # A subset of the rows is the BLEU of that sub-corpus, as sacrebleu computes it on its own.
    assert bleu_from_stats(res.stats[[0, 2]]) == pytest.approx(
        corpus_bleu([hyps[0], hyps[2]], [refs[0], refs[2]]).score
    )
    # corpus BLEU pools n-gram counts: it is not the mean of sentence scores
    singles = [corpus_bleu([h], [r]).score for h, r in zip(hyps, refs, strict=True)]
    assert res.score != pytest.approx(np.mean(singles))


def test_bleu_rejects_mismatched_lengths():
    with pytest.raises(OmnifuseError):
        corpus_bleu(["a", "b"], ["a"])


# ------------------------------------------------------------------ CIDEr-D
def test_cider_by_hand():
    # Two images. Image 1: reference "a cat sat", candidate "cat cat". Image 2: reference and candidate
    # "a dog". N = 2 images, so an n-gram's idf is ln 2 − ln df: "a" (in both) weighs 0, the others ln 2.
    #
    # Image 2: unigram vectors {dog: ln2} both sides -> cosine 1; bigram {"a dog": ln2} -> 1; no 3-, 4-grams
    # -> 0; equal lengths -> penalty 1. Score 10 · (1 + 1 + 0 + 0) / 4 = 5.
    #
    # Image 1: candidate unigrams {cat: 2 ln2} (norm 2 ln2), reference {a: 0, cat: ln2, sat: ln2}
    # (norm √2 ln2). Clipped dot product min(2 ln2, ln2) · ln2 = ln2², so cosine 1 / (2√2). The candidate's
    # bigram "cat cat" is not in the reference -> 0; no trigram -> 0. Lengths (in bigrams, as pycocoevalcap)
    # 1 vs 2 -> penalty exp(−1 / 72). Score 10 · (1 / (2√2)) · exp(−1/72) / 4.
    res = cider_d(["cat cat", "a dog"], [["a cat sat"], ["A dog."]])
    assert res.per_sample[1] == pytest.approx(5.0)
    assert res.per_sample[0] == pytest.approx(10 / (8 * math.sqrt(2)) * math.exp(-1 / 72))
    assert res.score == pytest.approx(res.per_sample.mean())
    # clipping: repeating the matching word does not raise the score above saying it once
    once = cider_d(["cat", "a dog"], [["a cat sat"], ["a dog"]]).per_sample[0]
    assert once > res.per_sample[0]


def _dense_cider(hyps, refs, sigma=6.0):
    """CIDEr-D again, with dense numpy vectors over the vocabulary of every n-gram (separate code)."""
    tok = [[caption_tokens(r) for r in rs] for rs in refs]
    hyp_tok = [caption_tokens(h) for h in hyps]

    def grams(words, n):
        return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]

    total = np.zeros(len(hyps))
    for n in range(1, 5):
        vocab = sorted(
            {g for rs in tok for r in rs for g in grams(r, n)} | {g for h in hyp_tok for g in grams(h, n)}
        )
        index = {g: i for i, g in enumerate(vocab)}
        df = np.zeros(len(vocab))
        for rs in tok:
            present = np.zeros(len(vocab), dtype=bool)
            for r in rs:
                for g in grams(r, n):
                    present[index[g]] = True
            df += present
        idf = np.log(len(hyps)) - np.log(np.maximum(df, 1.0))

        def tfidf(words, n=n, index=index, idf=idf, vocab=vocab):
            v = np.zeros(len(vocab))
            for g in grams(words, n):
                v[index[g]] += 1
            return v * idf

        for i, (h, rs) in enumerate(zip(hyp_tok, tok, strict=True)):
            vh = tfidf(h)
            acc = 0.0
            for r in rs:
                vr = tfidf(r)
                dot = np.sum(np.minimum(vh, vr) * vr)
                nh, nr = np.linalg.norm(vh), np.linalg.norm(vr)
                cos = dot / (nh * nr) if nh > 0 and nr > 0 else dot
                delta = max(len(h) - 1, 0) - max(len(r) - 1, 0)  # lengths in bigrams
                acc += cos * np.exp(-(delta**2) / (2 * sigma**2))
            total[i] += acc / len(rs)
    return 10 * total / 4


def test_cider_against_dense_reimplementation():
    hyps = ["a man riding a horse on the beach", "two dogs play in the snow", "a plate of food"]
    refs = [
        ["a man rides a horse along the beach", "a person on a horse by the sea"],
        ["two dogs playing in snow", "dogs run through the snow", "two brown dogs in the snow"],
        ["a plate with food on a table", "food on a white plate"],
    ]
    res = cider_d(hyps, refs)
    np.testing.assert_allclose(res.per_sample, _dense_cider(hyps, refs), rtol=1e-12)
    assert (res.per_sample > 0).all()


def test_cider_of_a_single_image_is_zero():
    # idf = log(1) − log(1) = 0 for every reference n-gram: CIDEr needs a set of images
    assert cider_d(["a dog"], [["a dog"]]).score == 0.0


# ------------------------------------------------------------------ classification
def test_classification_by_hand():
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a"]
    r = classification_scores(y_true, y_pred)
    assert r.accuracy == pytest.approx(3 / 5) and r.correct.tolist() == [1, 0, 1, 1, 0]
    # a: 1 of 2 predicted "a" right, 1 of 2 true "a" found. b: 2 of 3, 2 of 2. c: never predicted -> 0.
    assert r.precision == pytest.approx({"a": 1 / 2, "b": 2 / 3, "c": 0.0})
    assert r.recall == pytest.approx({"a": 1 / 2, "b": 1.0, "c": 0.0})
    assert r.f1 == pytest.approx({"a": 1 / 2, "b": 2 * (2 / 3) / (2 / 3 + 1), "c": 0.0})
    assert r.support == {"a": 2, "b": 2, "c": 1}
    assert r.macro_precision == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert r.macro_recall == pytest.approx((1 / 2 + 1) / 3)
    assert r.macro_f1 == pytest.approx((1 / 2 + 0.8) / 3)
    assert r.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert r.summary()["per_class"]["b"]["support"] == 2


def test_classification_rejects_mismatched_lengths():
    with pytest.raises(OmnifuseError):
        classification_scores([1, 2], [1])


# ------------------------------------------------------------------ retrieval
SIM = np.array(
    [
        [0.9, 0.1, 0.3],
        [0.2, 0.5, 0.8],
        [0.4, 0.6, 0.7],
    ]
)


def test_recall_at_k_both_directions_by_hand():
    both = image_text_retrieval(SIM, ks=(1, 2))
    i2t, t2i = both["image_to_text"], both["text_to_image"]
    # image 1's caption (0.5) is beaten by caption 2 (0.8): rank 2; the others rank 1
    assert i2t.ranks.tolist() == [1, 2, 1]
    assert i2t.recall == pytest.approx({1: 2 / 3, 2: 1.0})
    # text 1: image 2 (0.6) beats image 1 (0.5); text 2: image 1 (0.8) beats image 2 (0.7)
    assert t2i.ranks.tolist() == [1, 2, 2]
    assert t2i.recall == pytest.approx({1: 1 / 3, 2: 1.0})
    assert t2i.hits[1].tolist() == [1, 0, 0]


def test_ties_count_against_the_model():
    r = recall_at_k(np.ones((4, 4)), ks=(1, 4))
    assert r.ranks.tolist() == [4, 4, 4, 4] and r.recall == {1: 0.0, 4: 1.0}


def test_several_captions_per_image():
    # texts 0, 1 describe image 0; texts 2, 3 image 1
    sim = np.array([[0.1, 0.9, 0.5, 0.2], [0.3, 0.8, 0.4, 0.6]])
    both = image_text_retrieval(sim, text_to_image=[0, 0, 1, 1], ks=(1,))
    # image 0: best caption 1 (0.9) is first; image 1: best own caption 3 (0.6) beaten by caption 1 (0.8)
    assert both["image_to_text"].ranks.tolist() == [1, 2]
    # text 0 (0.1 vs 0.3): rank 2; text 1 (0.9 vs 0.8): 1; text 2 (0.4 vs 0.5): 2; text 3 (0.6 vs 0.2): 1
    assert both["text_to_image"].ranks.tolist() == [2, 1, 2, 1]
    with pytest.raises(OmnifuseError):
        image_text_retrieval(sim)  # not square: needs text_to_image


# ------------------------------------------------------------------ ASR
def test_wer_by_hand():
    refs = ["the cat sat", "hello world", "a b c d"]
    hyps = ["the cat sat down", "hello", "a x c d"]
    r = word_error_rate(refs, hyps)
    # one insertion of 3 words; one deletion of 2; one substitution of 4
    assert r.per_utterance.tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 4])
    assert r.errors.tolist() == [1, 1, 1] and r.reference_words.tolist() == [3, 2, 4]
    assert r.wer == pytest.approx(3 / 9)  # corpus: total errors / total reference words
    assert r.summary()["mean_utterance_wer"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)
    assert r.stats.tolist() == [[1, 3], [1, 2], [1, 4]]


def test_wer_of_an_empty_hypothesis_and_an_empty_reference():
    assert word_error_rate(["a b"], [""]).wer == 1.0
    with pytest.raises(OmnifuseError, match="empty reference"):
        word_error_rate(["a b", "  "], ["a b", "c"])


def test_caption_tokens():
    assert caption_tokens("A dog, running!") == ["a", "dog", "running"]
    assert Counter(caption_tokens("the the")) == {"the": 2}
