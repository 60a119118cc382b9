"""Bootstrap intervals and paired comparisons on synthetic scores with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omnifuse.errors import OmnifuseError
from omnifuse.eval.metrics import bleu_from_stats, corpus_bleu, wer_from_stats
from omnifuse.eval.stats import bootstrap_ci, paired_comparison


def test_ci_covers_the_true_mean_at_about_the_nominal_rate():
    p, n = 0.3, 200
    covered = 0
    for seed in range(100):
        scores = np.random.default_rng(1000 + seed).random(n) < p
        ci = bootstrap_ci(scores, n_resamples=2000, seed=seed)
        assert ci.low <= ci.estimate <= ci.high
        covered += ci.low <= p <= ci.high
    assert covered >= 90  # nominal 95 of 100


def test_ci_width_is_about_the_normal_approximation_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    widths = {}
    for n in (100, 1600):
        ci = bootstrap_ci(rng.random(n) < 0.5, seed=1)
        widths[n] = ci.high - ci.low
        normal = 2 * 1.96 * math.sqrt(0.25 / n)
        assert widths[n] == pytest.approx(normal, rel=0.25)
    assert widths[1600] < widths[100] / 3  # 16× the samples: about a quarter of the width


def test_degenerate_scores_give_the_point_not_nan():
    for scores in ([1.0] * 50, [0.0] * 7, [0.4]):
        ci = bootstrap_ci(scores)
        assert ci.low == ci.high == ci.estimate == scores[0]
    # one differing sample: a real interval again
    ci = bootstrap_ci([1.0] * 49 + [0.0])
    assert 0.0 <= ci.low < ci.high <= 1.0 and np.isfinite([ci.low, ci.high]).all()


def test_percentile_method_and_invalid_input():
    scores = np.random.default_rng(3).random(300)
    ci = bootstrap_ci(scores, method="percentile")
    assert ci.method == "percentile" and ci.low < scores.mean() < ci.high
    with pytest.raises(OmnifuseError):
        bootstrap_ci([])
    with pytest.raises(OmnifuseError):
        bootstrap_ci(scores, confidence=1.5)


def test_ratio_statistic_on_rows():
    # corpus WER = Σ errors / Σ words, resampling utterances (rows)
    rng = np.random.default_rng(0)
    words = rng.integers(3, 20, 300)
    errors = rng.binomial(words, 0.2)
    rows = np.stack([errors, words], axis=1)
    ci = bootstrap_ci(rows, wer_from_stats, n_resamples=1000)
    assert ci.estimate == pytest.approx(errors.sum() / words.sum())
    assert ci.low < 0.2 < ci.high and ci.high - ci.low < 0.05
    with pytest.raises(OmnifuseError):
        bootstrap_ci(rows)  # rows need a statistic


def test_bleu_bootstrap():
    hyps = ["the cat sat on the mat", "a dog runs", "two birds fly", "the sun is hot"] * 5
    refs = ["the cat sat on a mat", "a dog runs fast", "two birds fly high", "the sun is very hot"] * 5
    res = corpus_bleu(hyps, refs)
    ci = bootstrap_ci(res.stats, bleu_from_stats, n_resamples=500, method="percentile")
    assert ci.estimate == pytest.approx(res.score)
    assert ci.low <= res.score <= ci.high and ci.low < ci.high


def test_identical_runs_differ_by_nothing():
    a = (np.random.default_rng(0).random(500) < 0.7).astype(float)
    c = paired_comparison(a, a.copy())
    assert c.difference == 0.0 and c.ci == (0.0, 0.0) and c.p_value == 1.0
    assert c.only_a == 0 and c.only_b == 0 and c.n == 500


def test_a_clearly_better_b():
    rng = np.random.default_rng(0)
    a = (rng.random(500) < 0.6).astype(float)
    b = np.where(rng.random(500) < 0.5, 1.0, a)  # B fixes about half of A's errors: +20 points
    c = paired_comparison(a, b)
    assert c.difference == pytest.approx(b.mean() - a.mean()) and c.difference > 0.15
    assert 0 < c.ci[0] < c.difference < c.ci[1]
    assert c.p_value < 0.001
    assert c.only_a == 0 and c.only_b == int(((a == 0) & (b == 1)).sum()) > 0
    # A against B: the same comparison mirrored
    r = paired_comparison(b, a)
    assert r.difference == pytest.approx(-c.difference) and r.ci[1] < 0
    assert (r.only_a, r.only_b) == (c.only_b, c.only_a)


def test_exact_permutation_p_value_by_hand():
    # 3 samples, B right and A wrong on all: of the 2³ = 8 sign patterns only "all +" and "all −"
    # reach |mean difference| = 1, so the two-sided p-value is 2/8.
    c = paired_comparison([0, 0, 0], [1, 1, 1])
    assert c.p_value == pytest.approx(0.25) and c.difference == 1.0 and c.only_b == 3


def test_no_difference_rarely_looks_significant():
    significant = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        a, b = rng.random(200) < 0.5, rng.random(200) < 0.5
        significant += paired_comparison(a, b, n_resamples=2000, seed=seed).p_value < 0.05
    assert significant <= 6  # about 2 of 40 expected at the 5 % level


def test_continuous_scores_have_no_right_wrong_counts():
    rng = np.random.default_rng(0)
    a = rng.random(100)
    c = paired_comparison(a, a + 0.1)
    assert c.only_a is None and "only_a" not in c.summary()
    assert c.difference == pytest.approx(0.1) and c.ci == pytest.approx((0.1, 0.1))


def test_mismatched_lengths_are_an_error():
    with pytest.raises(OmnifuseError, match="same samples"):
        paired_comparison([1, 0, 1], [1, 0])


def test_a_paired_comparison_of_one_differing_sample_has_p_one():
    result = paired_comparison([0.0], [1.0])
    assert (result.n, result.difference, result.ci, result.p_value) == (1, 1.0, (1.0, 1.0), 1.0)
