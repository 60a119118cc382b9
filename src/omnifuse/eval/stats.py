"""Uncertainty of evaluation scores: bootstrap confidence intervals and paired comparisons of two runs.

Both work on per-sample scores (1/0 for exact match, a VQAv2 or CIDEr score, a retrieval hit, ...), so
they say how much a score would move on another draw of samples of the same kind. Across training seeds
see :mod:`omnifuse.sweep.report` (Student-t over seeds); here the samples are the source of variation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from omnifuse.errors import OmnifuseError

N_RESAMPLES = 4000


@dataclass(frozen=True)
class ConfidenceInterval:
    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    method: str

    def summary(self) -> dict:
        return {
            "estimate": self.estimate,
            "ci": [self.low, self.high],
            "confidence": self.confidence,
            "n": self.n,
            "method": self.method,
        }


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_ci(
    per_sample_scores: Sequence[float] | np.ndarray,
    statistic: Callable | None = None,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    method: str = "BCa",
) -> ConfidenceInterval:
    """Bootstrap confidence interval of ``statistic`` (default: the mean) over samples.

    ``per_sample_scores`` is one value per sample, or a 2-D array with one row per sample for a
    statistic that is not a mean of per-sample values (corpus BLEU, corpus WER): then ``statistic``
    takes the resampled rows ``[n, d]`` and returns a number. A 1-D ``statistic`` must accept
    ``axis`` (it is called vectorised, like ``numpy.mean``).

    ``method`` is scipy's: ``"BCa"`` (bias-corrected and accelerated, the default) or ``"percentile"``.
    Where the resamples cannot vary (every score equal) the interval is the point itself instead of NaN.
    """
    data = np.asarray(per_sample_scores, dtype=float)
    if data.ndim not in (1, 2) or len(data) == 0:
        raise OmnifuseError(f"bootstrap_ci needs one score (or row) per sample; got shape {data.shape}")
    if not 0 < confidence < 1:
        raise OmnifuseError(f"confidence must be between 0 and 1, got {confidence}")
    n = len(data)
    if data.ndim == 1:
        stat = statistic or _mean
        estimate = float(stat(data, axis=-1))
        sample: tuple[np.ndarray, ...] = (data,)
        vectorized = True

        def fn(x, axis=-1):
            return stat(x, axis=axis)

    else:
        if statistic is None:
            raise OmnifuseError("a 2-D array of per-sample rows needs a statistic over the rows")
        estimate = float(statistic(data))
        # Resample row indices; each resample of indices picks rows of the data.
        sample = (np.arange(n),)
        vectorized = False

        def fn(idx):
            return statistic(data[np.asarray(idx, dtype=int)])

    if n == 1 or (np.all(data == data[0])):  # nothing to resample: no spread (and scipy would give NaN)
        return ConfidenceInterval(estimate, estimate, estimate, confidence, n, "degenerate")
    low, high = _scipy_interval(sample, fn, vectorized, confidence, n_resamples, seed, method)
    used = method
    if not (np.isfinite(low) and np.isfinite(high)) and method != "percentile":
        # BCa is undefined when, e.g., every resample has the same statistic; the percentile
        # interval is not.
        low, high = _scipy_interval(sample, fn, vectorized, confidence, n_resamples, seed, "percentile")
        used = "percentile"
    if not (np.isfinite(low) and np.isfinite(high)):
        low = high = estimate
        used = "degenerate"
    return ConfidenceInterval(estimate, float(low), float(high), confidence, n, used)


def _scipy_interval(sample, fn, vectorized, confidence, n_resamples, seed, method, paired=False):
    with warnings.catch_warnings():
        # Degenerate resamples (BCa on near-constant data) warn and give NaN; the caller falls back.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            sample,
            fn,
            n_resamples=n_resamples,
            vectorized=vectorized,
            paired=paired,
            confidence_level=confidence,
            method=method,
            batch=1000,
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class PairedComparison:
    """Run B against run A on the same samples: ``difference`` is mean(B) − mean(A)."""

    n: int
    mean_a: float
    mean_b: float
    difference: float
    ci: tuple[float, float]
    confidence: float
    p_value: float
    only_a: int | None  # binary scores: samples only A gets right
    only_b: int | None

    def summary(self) -> dict:
        out = {
            "n": self.n,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "difference": self.difference,
            "ci": list(self.ci),
            "confidence": self.confidence,
            "p_value": self.p_value,
        }
        if self.only_a is not None:
            out |= {"only_a": self.only_a, "only_b": self.only_b}
        return out


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def paired_comparison(
    a_scores: Sequence[float] | np.ndarray,
    b_scores: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Compare two runs scored on the same samples (``a_scores[i]`` and ``b_scores[i]``: one sample).

    - difference of the means (B − A) with a paired bootstrap confidence interval (samples resampled
      together, so what both runs find hard cancels out);
    - two-sided p-value of the paired permutation (sign-flip) test: under "A and B are exchangeable"
      each sample's two scores are swapped at random (exact over all 2^n swaps when that is fewer
      than ``n_resamples``);
    - for 0/1 scores, the samples only A / only B gets right (the discordant pairs).
    """
    a = np.asarray(a_scores, dtype=float)
    b = np.asarray(b_scores, dtype=float)
    if a.ndim != 1 or b.ndim != 1:
        raise OmnifuseError("paired_comparison takes one score per sample for each run")
    if len(a) != len(b):
        raise OmnifuseError(
            f"paired comparison needs the same samples in both runs; got {len(a)} and {len(b)} scores"
        )
    if len(a) == 0:
        raise OmnifuseError("paired comparison of no samples")
    n = len(a)
    diff = float(np.mean(b) - np.mean(a))
    d = b - a
    if n == 1 or np.all(d == d[0]):
        ci = (diff, diff)  # the per-sample differences cannot vary under resampling
    else:
        low, high = _scipy_interval(
            (a, b), _mean_difference, True, confidence, n_resamples, seed, "BCa", paired=True
        )
        if not (np.isfinite(low) and np.isfinite(high)):
            low, high = _scipy_interval(
                (a, b), _mean_difference, True, confidence, n_resamples, seed, "percentile", paired=True
            )
        ci = (float(low), float(high))
    if np.all(d == 0) or n == 1:
        # All differences 0: every permutation gives the observed 0. One sample: its two sign flips give
        # +d and −d, both as extreme as observed (scipy's test needs two samples).
        p = 1.0
    else:
        res = stats.permutation_test(
            (a, b),
            _mean_difference,
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_resamples,
            alternative="two-sided",
            batch=500,
            rng=np.random.default_rng(seed),
        )
        p = float(res.pvalue)
    binary = bool(np.all(np.isin(a, (0.0, 1.0))) and np.all(np.isin(b, (0.0, 1.0))))
    only_a = int(np.sum((a == 1) & (b == 0))) if binary else None
    only_b = int(np.sum((a == 0) & (b == 1))) if binary else None
    return PairedComparison(n, float(np.mean(a)), float(np.mean(b)), diff, ci, confidence, p, only_a, only_b)
