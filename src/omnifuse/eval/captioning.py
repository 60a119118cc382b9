"""Captioning scored as captioning: BLEU-4, CIDEr-D and ROUGE-L over images, with bootstrap intervals.

The ``caption`` entry of :mod:`omnifuse.eval.scoring`'s table: a sample with ``meta.task: caption`` is
scored here (:func:`score_caption` per sample, :func:`summarise_captions` over them all). Its references
are ``meta.captions`` (COCO has five per image) or, without them, its assistant turn. docs/captioning.md
has the measured comparison with pycocoevalcap.

All three metrics see the same tokens, :func:`omnifuse.eval.metrics.caption_tokens` (lower case,
punctuation removed, split on whitespace: what the COCO evaluation's PTB tokeniser leaves, near enough):

- **BLEU-4**: sacrebleu's corpus BLEU (0..100) of the token strings (its 13a tokeniser then changes
  nothing). Close to, not equal to, pycocoevalcap's Bleu_4 (×100), which uses the closest reference length and
  no smoothing;
- **CIDEr-D**: :func:`omnifuse.eval.metrics.cider_d` (pycocoevalcap's CiderD, document frequencies from
  the evaluated references, on pycocoevalcap's scale: papers print it ×100); here also in sparse-matrix
  form so that a bootstrap resample can recompute it;
- **ROUGE-L**: written here (pycocoevalcap's 104 MB wheel, last released 2020, is no package to depend
  on for 20 lines): per image, the longest common subsequence with each reference, precision and recall
  each maxed over the references, F with β = 1.2, as pycocoevalcap's Rouge; the corpus score is the mean
  over images;
- **exact match**: the share of captions whose tokens equal one reference's (what VQA's accuracy column
  counts for a caption sample); for short templated captions the most direct figure. A set of captions
  none of which has four tokens has no 4-gram, so its BLEU-4 is 0 however right they are: the table says
  so (``bleu4_defined``).

Intervals: BLEU-4 and CIDEr-D are corpus-level (not means over images), so the bootstrap resamples
*images* and recomputes each score on the resample (``CI_RESAMPLES`` = 1000 resamples, seed 0,
percentile interval, each metric seeded alike).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.eval.metrics import _ngrams, bleu_from_stats, caption_tokens, corpus_bleu
from omnifuse.eval.stats import bootstrap_ci

CI_RESAMPLES = 1000  # bootstrap resamples of the images (seed 0)
ROUGE_BETA = 1.2  # pycocoevalcap's Rouge: recall weighted 1.2² against precision
CIDER_SIGMA = 6.0


def caption_references(sample: Sample) -> list[str]:
    """A caption sample's references: ``meta.captions`` (a non-empty list) or its assistant turn."""
    refs = sample.meta.get("captions")
    if isinstance(refs, list | tuple) and refs:
        return [str(r) for r in refs]
    answer = sample.answer()
    if not answer.strip():
        raise OmnifuseError(f"caption sample {sample.id} has no reference: no meta.captions and no answer")
    return [answer]


# ------------------------------------------------------------------ ROUGE-L
def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, references: Sequence[str], beta: float = ROUGE_BETA) -> float:
    """ROUGE-L of one caption, as pycocoevalcap's Rouge: precision = LCS / hypothesis length and recall =
    LCS / reference length, each the maximum over the references, then
    F = (1 + β²)·P·R / (R + β²·P); 0 when either is 0."""
    hyp = caption_tokens(hypothesis)
    if not references:
        raise OmnifuseError("rouge_l needs at least one reference caption")
    precision = recall = 0.0
    for ref in references:
        r = caption_tokens(ref)
        lcs = _lcs(hyp, r)
        if hyp:
            precision = max(precision, lcs / len(hyp))
        if r:
            recall = max(recall, lcs / len(r))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


# ------------------------------------------------------------------ CIDEr-D, resamplable
class CiderD:
    """CIDEr-D of a fixed set of captions, for any multiset of its images (a bootstrap resample).

    Every term of :func:`omnifuse.eval.metrics.cider_d` is linear in the squared IDF weights, which
    depend on the resample only through the document frequencies. So the n-gram counts go once into
    sparse matrices, and a resample costs a few sparse products: with ``w`` the images' multiplicities,
    df = B·w, idf = log Σw − log max(1, df), and per (image, reference) pair and n-gram order the dot
    product, both norms and the length penalty follow.
    """

    def __init__(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]], sigma=CIDER_SIGMA):
        cand = [_ngrams(caption_tokens(h)) for h in hypotheses]
        refs = [[_ngrams(caption_tokens(r)) for r in rs] for rs in references]
        vocab: dict[tuple, int] = {}
        for c in [*cand, *(r for rs in refs for r in rs)]:
            for g in c:
                vocab.setdefault(g, len(vocab))
        g_count = len(vocab)
        order = np.zeros((g_count, 4))
        for g, j in vocab.items():
            order[j, len(g) - 1] = 1.0
        self.order = order
        self.n = len(cand)
        doc: list[tuple[int, int]] = []  # (n-gram, image) where the image's references hold the n-gram
        hyp2, ref2, dot = [], [], []  # sparse rows: tf², tf², min(h, r)·r
        pair_image, penalty = [], []
        for i, (c, rs) in enumerate(zip(cand, refs, strict=True)):
            doc += [(vocab[g], i) for g in set().union(*(r.keys() for r in rs))]
            hyp2 += [(i, vocab[g], tf * tf) for g, tf in c.items()]
            lh = sum(tf for g, tf in c.items() if len(g) == 2)
            for r in rs:
                p = len(pair_image)
                pair_image.append(i)
                ref2 += [(p, vocab[g], tf * tf) for g, tf in r.items()]
                dot += [(p, vocab[g], min(c[g], tf) * tf) for g, tf in r.items() if g in c]
                lr = sum(tf for g, tf in r.items() if len(g) == 2)
                penalty.append(math.exp(-((lh - lr) ** 2) / (2 * sigma**2)))
        pairs = len(pair_image)
        self.df = _matrix(doc and [(g, i, 1.0) for g, i in doc], (g_count, self.n))
        self.hyp2 = _matrix(hyp2, (self.n, g_count))
        self.ref2 = _matrix(ref2, (pairs, g_count))
        self.dot = _matrix(dot, (pairs, g_count))
        self.pair_image = np.asarray(pair_image, dtype=int)
        self.penalty = np.asarray(penalty)
        self.refs_per_image = np.asarray([len(rs) for rs in refs], dtype=float)

    def per_image(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Each image's CIDEr-D with document frequencies from the images weighted by ``weights`` (their
        multiplicities in a resample; default: each once, i.e. the plain score)."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=float)
        df = self.df @ w
        idf = math.log(float(w.sum())) - np.log(np.maximum(df, 1.0))
        per_order = self.order * (idf**2)[:, None]  # [G, 4]
        norm_h = np.sqrt(self.hyp2 @ per_order)[self.pair_image]  # [pairs, 4]
        norm_r = np.sqrt(self.ref2 @ per_order)
        dots = self.dot @ per_order
        denom = norm_h * norm_r
        val = np.divide(dots, denom, out=np.zeros_like(dots), where=denom != 0)
        pair_score = val.mean(axis=1) * self.penalty
        total = np.bincount(self.pair_image, weights=pair_score, minlength=self.n)
        return 10.0 * total / self.refs_per_image

    def score_of(self, images: np.ndarray) -> float:
        """Corpus CIDEr-D of a resample given as image indices (repeats allowed)."""
        idx = np.asarray(images, dtype=int).reshape(-1)
        w = np.bincount(idx, minlength=self.n).astype(float)
        return float((self.per_image(w) * w).sum() / w.sum())


def _matrix(entries, shape) -> sparse.csr_matrix:
    if not entries:
        return sparse.csr_matrix(shape)
    rows, cols, vals = zip(*entries, strict=True)
    return sparse.csr_matrix((vals, (rows, cols)), shape=shape)


# ------------------------------------------------------------------ the three together
@dataclass(frozen=True)
class CaptionScores:
    n: int
    bleu4: float  # 0..100
    cider_d: float  # pycocoevalcap's scale (papers print it ×100)
    rouge_l: float  # 0..1
    exact: float  # 0..1: the share of captions equal to one of their references (normalised tokens)
    ci95: dict[str, tuple[float, float]]  # metric → 95 % bootstrap interval over images
    cider_per_image: np.ndarray
    rouge_per_image: np.ndarray
    n_resamples: int
    # False when no caption has four tokens: BLEU-4 is then 0 by definition, however right the captions
    # (short captions such as "a red circle" have no 4-gram), and the table says so.
    bleu4_defined: bool = True

    def summary(self) -> dict:
        out: dict = {"n": self.n}
        for name in ("bleu4", "cider_d", "rouge_l", "exact"):
            out[name] = getattr(self, name)
            out[f"{name}_ci95"] = list(self.ci95[name])
        out["bleu4_defined"] = self.bleu4_defined
        out["ci"] = f"95 % percentile bootstrap over images, {self.n_resamples} resamples, seed 0"
        return out


def caption_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], n_resamples: int = CI_RESAMPLES
) -> CaptionScores:
    """BLEU-4 (0..100), CIDEr-D (pycocoevalcap's scale, up to 10; papers print it ×100: 1.17 → 117),
    ROUGE-L (0..1) and exact match (0..1) of one caption per image, each with a 95 % bootstrap interval
    over images."""
    if len(hypotheses) != len(references):
        raise OmnifuseError(f"{len(hypotheses)} captions but {len(references)} reference sets")
    if not hypotheses:
        raise OmnifuseError("no captions to score")
    tokens = [" ".join(caption_tokens(h)) for h in hypotheses]
    ref_tokens = [[" ".join(caption_tokens(r)) for r in rs] for rs in references]
    bleu = corpus_bleu(tokens, ref_tokens)
    cider = CiderD(hypotheses, references)
    cider_per_image = cider.per_image()
    rouge = np.asarray([rouge_l(h, rs) for h, rs in zip(hypotheses, references, strict=True)])
    exact = np.asarray([caption_matches(h, rs) for h, rs in zip(hypotheses, references, strict=True)], float)
    images = np.arange(len(hypotheses))[:, None].astype(float)  # rows to resample: image indices

    def ci(data, statistic=None) -> tuple[float, float]:
        res = bootstrap_ci(data, statistic, n_resamples=n_resamples, seed=0, method="percentile")
        return (res.low, res.high)

    intervals = {
        "bleu4": ci(bleu.stats, bleu_from_stats),
        "cider_d": ci(images, cider.score_of),
        "rouge_l": ci(rouge),
        "exact": ci(exact),
    }
    return CaptionScores(
        len(hypotheses),
        bleu.score,
        float(cider_per_image.mean()),
        float(rouge.mean()),
        float(exact.mean()),
        intervals,
        cider_per_image,
        rouge,
        n_resamples,
        bleu4_defined=any(len(t.split()) >= 4 for t in tokens),
    )


# ------------------------------------------------------------------ the caption task (eval.scoring)
REFERENCES = "caption_references"  # the prediction record's field that marks a caption sample


def caption_matches(caption: str, references: Sequence[str]) -> bool:
    """Whether ``caption``'s tokens equal one reference's (exact match after normalisation)."""
    return any(caption_tokens(caption) == caption_tokens(r) for r in references)


def score_caption(prediction: str, sample: Sample) -> dict:
    """The prediction record's fields for a ``meta.task: caption`` sample: ``score``/``correct`` say whether
    the caption equals a reference after normalisation (the accuracy column stays exact match); the
    caption metrics are corpus-level, computed over all caption records by :func:`summarise_captions`."""
    refs = caption_references(sample)
    hit = caption_matches(prediction, refs)
    return {"score": float(hit), "correct": hit, REFERENCES: refs, "rouge_l": rouge_l(prediction, refs)}


def summarise_captions(records: Sequence[dict]) -> dict | None:
    """BLEU-4, CIDEr-D and ROUGE-L [95 % CI] over the caption records (None when there are none)."""
    rows = [r for r in records if REFERENCES in r]
    if not rows:
        return None
    return caption_scores([r["prediction"] for r in rows], [r[REFERENCES] for r in rows]).summary()


def caption_table(summary: dict) -> tuple[str, tuple[str, ...], list[tuple[str, ...]]]:
    """Title, columns and rows (metric, score [95 % CI]) for the eval printout and the report."""

    def row(name: str, key: str, scale: float, note: str = "") -> tuple[str, ...]:
        low, high = summary[f"{key}_ci95"]
        return (name, f"{scale * summary[key]:.1f} [{scale * low:.1f}, {scale * high:.1f}]{note}")

    short = not summary.get("bleu4_defined", True)  # eval.json files written before the flag: defined
    rows = [
        row("BLEU-4", "bleu4", 1.0, " (no caption has 4 words: 0 by definition)" if short else ""),
        row("CIDEr-D (×100)", "cider_d", 100.0),
        row("ROUGE-L (×100)", "rouge_l", 100.0),
    ]
    if "exact" in summary:
        rows.append(row("exact match %", "exact", 100.0))
    title = f"captioning: {summary['n']} images ({summary['ci']})"
    return title, ("metric", "score [95 % CI]"), rows
