"""VQA evaluation: exact match after normalisation (the VQAv2 ten-answer rule where a sample has several
human answers, see :func:`omnifuse.eval.metrics.vqa_score`), per question type, with a blind baseline and
95 % bootstrap confidence intervals.

The blind baseline is the same trained model asked the same questions with the images removed from
the prompt: what the LLM answers from the text alone. The gap between the two is what the model
gets from looking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from omnifuse.data.sample import ImagePart, Sample, TextPart
from omnifuse.eval.metrics import (
    exact_match,
    normalize_answer,
    normalize_transcript,
    vqa_score,
    word_error_rate,
)
from omnifuse.eval.scoring import grounding_view, metric_for, metric_summaries
from omnifuse.eval.stats import bootstrap_ci
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.progress import progress_bar
from omnifuse.runtime import current_world, init_world, threads
from omnifuse.runtime.distributed import gather_dicts

__all__ = [
    "VQAResult",
    "evaluate_vqa",
    "exact_match",
    "normalize_answer",
    "reference_answers",
    "without_media",
]

CI_RESAMPLES = 2000  # bootstrap resamples for the 95 % intervals (milliseconds for 1000 questions)


def without_media(sample: Sample) -> Sample:
    messages = tuple(
        replace(m, parts=tuple(p for p in m.parts if not isinstance(p, ImagePart))) for m in sample.messages
    )
    return replace(sample, messages=messages)


def distinct_prompts(prompts: Sequence[Sample]) -> tuple[list[Sample], list[int]]:
    """The prompts to ask, each prompt of text only once (the blind baseline's questions repeat: easy-vqa's
    1000 test questions are 10 % distinct), and for every prompt the index of the one that answers it.
    Only for greedy decoding, where a prompt has one answer wherever it sits. A prompt with media is
    always asked: its parts compare by path, not by the pixels or samples of decoded media."""
    asked: list[Sample] = []
    first: dict[tuple, int] = {}
    where = []
    for sample in prompts:
        key = sample.prompt()
        text_only = all(isinstance(p, TextPart) for m in key for p in m.parts)
        if not text_only or key not in first:
            if text_only:
                first[key] = len(asked)
            where.append(len(asked))
            asked.append(sample)
        else:
            where.append(first[key])
    return asked, where


def reference_answers(sample: Sample) -> list[str]:
    """The human answers of a sample: ``meta["answers"]`` (e.g. VQAv2's ten) when it holds a non-empty
    list, else the last assistant turn."""
    answers = sample.meta.get("answers")
    if isinstance(answers, list | tuple) and answers:
        return [str(a) for a in answers]
    return [sample.answer()]


def accuracy_ci(scores: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    ci = bootstrap_ci(scores, confidence=confidence, n_resamples=CI_RESAMPLES, seed=0)
    return ci.low, ci.high


@dataclass
class VQAResult:
    accuracy: float
    n: int
    per_type: dict[str, dict]  # type -> {"accuracy", "n", "ci95": [low, high]}
    predictions: list[dict]
    ci95: tuple[float, float] | None = None  # 95 % bootstrap interval of the accuracy over questions
    asr: dict | None = None  # an ASR cascade: word error rate of what it heard against meta.transcript
    metrics: dict | None = None  # per-sample metrics' aggregates by name (eval.scoring), e.g. grounding

    def summary(self) -> dict:
        out = {"accuracy": self.accuracy, "n": self.n}
        if self.ci95 is not None:
            out["ci95"] = list(self.ci95)
        if self.asr is not None:
            out["asr"] = self.asr
        if self.metrics:
            out["metrics"] = self.metrics
        return out | {"per_type": self.per_type}


def cascade_wer(samples: Sequence[Sample], predictions: Sequence[dict]) -> dict | None:
    """Corpus WER (Whisper's English normaliser on both sides) of the transcripts an ASR cascade heard,
    against the samples' ``meta.transcript``; None when there is nothing to compare."""
    pairs = [
        (s.meta["transcript"], p["heard"])
        for s, p in zip(samples, predictions, strict=True)
        if "heard" in p
        and isinstance(s.meta.get("transcript"), str)
        and normalize_transcript(s.meta["transcript"])
    ]
    if not pairs:
        return None
    result = word_error_rate(
        [normalize_transcript(r) for r, _ in pairs], [normalize_transcript(h) for _, h in pairs]
    )
    exact = sum(normalize_transcript(r) == normalize_transcript(h) for r, h in pairs)
    return {"wer": result.wer, "exact": exact / len(pairs), "n": len(pairs)}


def _record(s: Sample, pred: str, asr) -> dict:
    refs = reference_answers(s)
    metric = metric_for(s)  # the sample's own metric (eval.scoring: grounding, ...), else VQA exact match
    score = vqa_score(pred, refs) if metric is None else 0.0
    record = {
        "id": s.id,
        "question_type": str(s.meta.get("question_type", "all")),
        "answer": s.answer(),
        "prediction": pred,
        "correct": score == 1.0,
        "score": score,
    }
    if metric is not None:
        record.update(metric.score(pred, s))
    if len(refs) > 1:
        record["answers"] = refs
    if asr is not None and s.audios():
        record["heard"] = " ".join(asr(clip, s.id) for clip in s.audios())
    return record


def evaluate_vqa(
    engine: Engine,
    samples: Sequence[Sample],
    cfg: GenerationConfig,
    batch_size: int = 32,
    blind: bool = False,
    progress: bool = True,
    label: str = "eval",
) -> VQAResult:
    """Answer every sample's question (its prompt) and score it against its reference answers.

    Each prediction record holds ``score`` (1/0 exact match; the VQAv2 partial credit with several
    answers) and ``correct`` (full credit). Accuracy is the mean score, with a 95 % bootstrap interval
    over questions, overall and per question type.
    """
    asr = engine.processor.speech_to_text  # an ASR cascade: transcribe all clips up front, in batches
    world = current_world()
    if world.distributed:
        init_world(engine.processor.device)
    prompts = [without_media(s) for s in samples] if blind else list(samples)
    asked, where = distinct_prompts(prompts) if cfg.greedy else (prompts, list(range(len(prompts))))
    # With several processes (torchrun / `--nproc`), batch k is answered by process k mod N: each batch is
    # the one a single process would answer, so the predictions are the same; they are gathered in order.
    batches = [asked[i : i + batch_size] for i in range(0, len(asked), batch_size)]
    mine = [(k, chunk) for k, chunk in enumerate(batches) if k % world.size == world.rank]
    if asr is not None:
        asr.prefetch([s for _, chunk in mine for s in chunk], progress=progress)
    answered: dict[int, list[str]] = {}
    with progress_bar(label, sum(len(c) for _, c in mine), enabled=progress and world.main) as bar:
        for k, chunk in mine:
            threads.tick()
            answered[k] = engine.generate(chunk, cfg)
            bar.advance(len(chunk))
    if world.distributed:
        answered = gather_dicts(answered)
    answers = [a for k in range(len(batches)) for a in answered[k]]
    predictions = [_record(s, answers[where[i]], asr) for i, s in enumerate(samples)]
    by_type: dict[str, list[float]] = defaultdict(list)
    for p in predictions:
        by_type[p["question_type"]].append(p["score"])
    per_type = {
        t: {"accuracy": sum(v) / len(v), "n": len(v), "ci95": list(accuracy_ci(v))}
        for t, v in sorted(by_type.items())
    }
    n = len(predictions)
    scores = [p["score"] for p in predictions]
    acc = sum(scores) / n if n else 0.0
    wer = cascade_wer(samples, predictions) if asr is not None else None
    ci = accuracy_ci(scores) if n else None
    metrics = metric_summaries(predictions)
    if "grounding" in metrics:  # can the image encoder see the reference boxes whole? (a crop cuts them)
        metrics["grounding"]["view"] = grounding_view(getattr(engine, "model", None), samples)
    return VQAResult(acc, n, per_type, predictions, ci, wer, metrics or None)
