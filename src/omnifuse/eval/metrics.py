"""Task metrics behind one shape: per-sample scores (to bootstrap, see :mod:`omnifuse.eval.stats`) plus
the aggregate the literature reports.

- VQA: normalised exact match; the VQAv2 ten-answer rule where a sample has several human answers.
- Captioning: corpus BLEU-4 (sacrebleu) and CIDEr-D (written here: no maintained pip package without Java).
- Classification: accuracy, macro and per-class precision / recall / F1 (scikit-learn), confusion matrix.
- Retrieval: recall@k from a similarity matrix, image→text and text→image.
- ASR: word error rate (jiwer), per utterance and over the corpus.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from omnifuse.errors import OmnifuseError

# ------------------------------------------------------------------ VQA
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (VQA-style)."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def vqa_score(prediction: str, answers: str | Sequence[str]) -> float:
    """Score of one VQA prediction, in [0, 1].

    One answer (a string, or a list of one): normalised exact match, 1.0 or 0.0. Several human
    answers: the VQAv2 rule. A prediction is fully right when at least 3 annotators gave it,
    ``min(#matching / 3, 1)``, and, as the official evaluation does, this is averaged over the leave-one-out
    subsets of the answers (10 subsets of 9 for VQAv2's ten answers), which makes 3 matches of 10 worth
    0.9, 2 worth 0.6 and 1 worth 0.3. Answers and prediction are compared after
    :func:`normalize_answer` (lower case, punctuation and articles removed); the
    official script's extra rules (number words to digits, contractions) are not applied.
    """
    if isinstance(answers, str):
        answers = [answers]
    answers = list(answers)
    if not answers:
        raise OmnifuseError("vqa_score needs at least one reference answer")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    matches = [r == pred for r in refs]
    total = sum(matches)
    # Leaving out answer i leaves total − matches[i] matching answers among the others.
    per_subset = [min((total - m) / 3, 1.0) for m in matches]
    return sum(per_subset) / len(per_subset)


# ------------------------------------------------------------------ captioning
def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU()  # sacrebleu's defaults: BLEU-4, 13a tokenisation, case-sensitive, 'exp' smoothing


def _check_captions(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    if len(hypotheses) != len(references):
        raise OmnifuseError(f"{len(hypotheses)} captions but {len(references)} reference sets")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise OmnifuseError(f"samples without reference captions: {empty[:5]}")
    return refs


@dataclass(frozen=True)
class BLEUResult:
    score: float  # corpus BLEU-4, 0..100
    stats: np.ndarray  # per sample: [hyp_len, ref_len, correct_1..4, total_1..4] (sums give the corpus)

    def summary(self) -> dict:
        return {"bleu": self.score, "n": len(self.stats)}


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU-4 from per-sample sufficient statistics (any subset or resample of the rows)."""
    from sacrebleu.metrics import BLEU

    s = np.asarray(stats).sum(axis=0)
    sys_len, ref_len = int(s[0]), int(s[1])
    correct, total = [int(x) for x in s[2:6]], [int(x) for x in s[6:10]]
    return float(BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> BLEUResult:
    """sacrebleu corpus BLEU-4 of one caption per sample against that sample's reference(s).

    Corpus BLEU is not a mean over samples, so the per-sample part is BLEU's sufficient statistics
    (n-gram matches and lengths): bootstrap it with ``bootstrap_ci(result.stats, bleu_from_stats)``.
    """
    refs = _check_captions(hypotheses, references)
    bleu = _bleu()
    rows = [_sentence_stats(bleu, hyp, rs) for hyp, rs in zip(hypotheses, refs, strict=True)]
    stats = np.asarray(rows, dtype=float).reshape(len(rows), 10)
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]  # None: no k-th ref
    score = bleu.corpus_score(list(hypotheses), streams).score
    return BLEUResult(float(score), stats)


def _sentence_stats(bleu, hypothesis: str, references: list[str]) -> list[int]:
    s = bleu.corpus_score([hypothesis], [[r] for r in references])
    return [s.sys_len, s.ref_len, *s.counts, *s.totals]


def caption_tokens(text: str) -> list[str]:
    """Lower case, punctuation removed, split on whitespace (what the COCO evaluation's PTB tokeniser
    leaves of a caption, near enough; articles are kept)."""
    return text.lower().translate(_PUNCT).split()


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


@dataclass(frozen=True)
class CIDErResult:
    score: float  # mean of per_sample
    per_sample: np.ndarray

    def summary(self) -> dict:
        return {"cider_d": self.score, "n": len(self.per_sample)}


def cider_d(
    hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], sigma: float = 6.0
) -> CIDErResult:
    """CIDEr-D (Vedantam et al. 2015), written here because the maintained implementation
    (pycocoevalcap) needs Java for its tokeniser. It follows pycocoevalcap's ``CiderD`` scorer:

    - each caption becomes TF-IDF vectors of its 1- to 4-grams: term frequency × (log N − log df),
      with N the number of evaluated samples and df the number of samples whose references contain
      the n-gram (document frequencies from the references of the evaluated set itself, so a score
      depends on the set: CIDEr of a single sample is 0);
    - per n, the cosine between the candidate's and each reference's vector, with the candidate's
      weights clipped at the reference's (``min(h, r) · r``) so repeating a word earns nothing;
    - times a Gaussian length penalty ``exp(−δ² / 2σ²)``, σ = 6, δ the length difference (pycocoevalcap
      measures length in bigrams, i.e. words − 1; we do the same so the numbers match);
    - averaged over n = 1..4 and over the references, times 10.

    Tokens: :func:`caption_tokens`.
    """
    refs = _check_captions(hypotheses, references)
    n_max = 4
    cand = [_ngrams(caption_tokens(h), n_max) for h in hypotheses]
    ref_counts = [[_ngrams(caption_tokens(r), n_max) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rs in ref_counts:
        df.update(set().union(*(r.keys() for r in rs)))
    log_n = math.log(float(len(refs)))

    def vectors(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n_max)]
        norm = [0.0] * n_max
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = tf * (log_n - math.log(max(1.0, df[gram])))
            vec[k][gram] = w
            norm[k] += w * w
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for c, rs in zip(cand, ref_counts, strict=True):
        vh, nh, lh = vectors(c)
        total = 0.0
        for r in rs:
            vr, nr, lr = vectors(r)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            per_n = []
            for k in range(n_max):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                per_n.append(val * penalty)
            total += sum(per_n) / n_max
        scores.append(10.0 * total / len(rs))
    per_sample = np.asarray(scores, dtype=float)
    return CIDErResult(float(per_sample.mean()), per_sample)


# ------------------------------------------------------------------ classification
@dataclass(frozen=True)
class ClassificationResult:
    accuracy: float
    correct: np.ndarray  # per sample, 0/1
    labels: list
    precision: dict  # per class
    recall: dict
    f1: dict
    support: dict
    macro_precision: float
    macro_recall: float
    macro_f1: float
    confusion: np.ndarray  # rows: true label, columns: predicted, in ``labels`` order

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "per_class": {
                str(c): {
                    "precision": self.precision[c],
                    "recall": self.recall[c],
                    "f1": self.f1[c],
                    "support": self.support[c],
                }
                for c in self.labels
            },
            "labels": [str(c) for c in self.labels],
            "confusion": self.confusion.tolist(),
        }


def classification_scores(
    y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None
) -> ClassificationResult:
    """Accuracy, per-class and macro precision / recall / F1 (scikit-learn; 0 where undefined, e.g. a
    class never predicted), and the confusion matrix. ``labels`` defaults to every label seen, sorted."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise OmnifuseError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise OmnifuseError("classification_scores of no samples")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    yt, yp = list(y_true), list(y_pred)
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(yt, yp, labels=labels, average="macro", zero_division=0)
    correct = np.asarray([a == b for a, b in zip(yt, yp, strict=True)], dtype=float)
    return ClassificationResult(
        accuracy=float(correct.mean()),
        correct=correct,
        labels=labels,
        precision=dict(zip(labels, map(float, p), strict=True)),
        recall=dict(zip(labels, map(float, r), strict=True)),
        f1=dict(zip(labels, map(float, f), strict=True)),
        support=dict(zip(labels, map(int, s), strict=True)),
        macro_precision=float(mp),
        macro_recall=float(mr),
        macro_f1=float(mf),
        confusion=confusion_matrix(yt, yp, labels=labels),
    )


# ------------------------------------------------------------------ retrieval
@dataclass(frozen=True)
class RetrievalResult:
    ranks: np.ndarray  # per query: 1-based rank of its best-ranked positive item
    recall: dict[int, float]  # k -> fraction of queries with a positive in the top k
    hits: dict[int, np.ndarray] = field(repr=False)  # k -> per query 0/1 (to bootstrap)

    def summary(self) -> dict:
        return {
            **{f"R@{k}": v for k, v in self.recall.items()},
            "median_rank": float(np.median(self.ranks)),
            "n": len(self.ranks),
        }


def recall_at_k(
    similarity: np.ndarray,
    positives: Sequence[int | Sequence[int]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalResult:
    """Recall@k of queries (rows of ``similarity [n_queries, n_items]``, higher = more similar).

    ``positives[q]``: the item (or items) that answer query q; default item q (a square matrix of
    matching pairs). A query's rank is 1 + the number of non-positive items scored at least as high as
    its best positive: ties count against the model, so constant similarities do not score.
    """
    sim = np.asarray(similarity, dtype=float)
    if sim.ndim != 2:
        raise OmnifuseError(f"similarity must be a [queries, items] matrix, got shape {sim.shape}")
    nq, ni = sim.shape
    if positives is None:
        if nq != ni:
            raise OmnifuseError(f"a {nq}×{ni} similarity matrix needs explicit positives")
        positives = list(range(nq))
    if len(positives) != nq:
        raise OmnifuseError(f"{len(positives)} positive sets for {nq} queries")
    ranks = np.empty(nq, dtype=int)
    for q, pos in enumerate(positives):
        idx = np.atleast_1d(np.asarray(pos, dtype=int))
        if idx.size == 0 or idx.min() < 0 or idx.max() >= ni:
            raise OmnifuseError(f"query {q}: positives {idx.tolist()} are not items 0..{ni - 1}")
        mask = np.zeros(ni, dtype=bool)
        mask[idx] = True
        best = sim[q, mask].max()
        ranks[q] = 1 + int(np.sum(sim[q, ~mask] >= best))
    hits = {int(k): (ranks <= k).astype(float) for k in ks}
    return RetrievalResult(ranks, {k: float(h.mean()) for k, h in hits.items()}, hits)


def image_text_retrieval(
    similarity: np.ndarray,
    text_to_image: Sequence[int] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, RetrievalResult]:
    """Both directions from one ``[n_images, n_texts]`` similarity matrix: image→text (rows as queries)
    and text→image (columns). ``text_to_image[t]``: the image text t describes; default t (square
    matrix, one caption per image). With several captions per image, an image query is right when any
    of its captions is in the top k."""
    sim = np.asarray(similarity, dtype=float)
    if sim.ndim != 2:
        raise OmnifuseError(f"similarity must be an [images, texts] matrix, got shape {sim.shape}")
    n_img, n_txt = sim.shape
    owner = np.arange(n_txt) if text_to_image is None else np.asarray(text_to_image, dtype=int)
    if text_to_image is None and n_img != n_txt:
        raise OmnifuseError(f"a {n_img}×{n_txt} similarity matrix needs text_to_image")
    if len(owner) != n_txt:
        raise OmnifuseError(f"text_to_image has {len(owner)} entries for {n_txt} texts")
    img_pos = [np.flatnonzero(owner == i) for i in range(n_img)]
    missing = [i for i, p in enumerate(img_pos) if p.size == 0]
    if missing:
        raise OmnifuseError(f"images without a text: {missing[:5]}")
    return {
        "image_to_text": recall_at_k(sim, img_pos, ks),
        "text_to_image": recall_at_k(sim.T, [int(i) for i in owner], ks),
    }


# ------------------------------------------------------------------ ASR
@dataclass(frozen=True)
class WERResult:
    wer: float  # corpus: total errors / total reference words
    per_utterance: np.ndarray
    errors: np.ndarray  # substitutions + deletions + insertions, per utterance
    reference_words: np.ndarray

    @property
    def stats(self) -> np.ndarray:
        """Per utterance [errors, reference words]: bootstrap with ``bootstrap_ci(stats, wer_from_stats)``."""
        return np.stack([self.errors, self.reference_words], axis=1).astype(float)

    def summary(self) -> dict:
        return {
            "wer": self.wer,
            "mean_utterance_wer": float(self.per_utterance.mean()),
            "n": len(self.per_utterance),
        }


@functools.cache
def _english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})  # no British → American spelling table: it ships with hub files only


def normalize_transcript(text: str) -> str:
    """Whisper's English text normaliser (transformers' ``EnglishTextNormalizer``), the usual one for
    Whisper WER: lower case, punctuation and hyphens to spaces, ``Mr.`` → ``mister``, number words →
    digits, contractions expanded. Apply it to references and hypotheses alike before
    :func:`word_error_rate`."""
    return _english_normalizer()(text)


def wer_from_stats(stats: np.ndarray) -> float:
    s = np.asarray(stats, dtype=float).sum(axis=0)
    return float(s[0] / s[1])


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> WERResult:
    """WER with jiwer (word-level Levenshtein alignment): per utterance, and over the corpus as total
    errors / total reference words (not the mean of the per-utterance rates, which overweights short
    utterances). Text is compared as given, split on whitespace: normalise case and punctuation first
    (:func:`normalize_transcript`) if the references do not."""
    import jiwer

    if len(references) != len(hypotheses):
        raise OmnifuseError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if len(references) == 0:
        raise OmnifuseError("word_error_rate of no utterances")
    empty = [i for i, r in enumerate(references) if not r.strip()]
    if empty:
        raise OmnifuseError(f"empty reference transcripts (WER undefined): utterances {empty[:5]}")
    errors, words, rates = [], [], []
    for ref, hyp in zip(references, hypotheses, strict=True):
        o = jiwer.process_words(ref, hyp)
        e = o.substitutions + o.deletions + o.insertions
        w = o.substitutions + o.deletions + o.hits
        errors.append(e)
        words.append(w)
        rates.append(e / w)
    err, wd = np.asarray(errors), np.asarray(words)
    return WERResult(float(err.sum() / wd.sum()), np.asarray(rates, dtype=float), err, wd)
