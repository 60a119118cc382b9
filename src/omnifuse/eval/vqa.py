"""VQA evaluation: exact match after normalisation, per question type, with a blind baseline.

The blind baseline is the same trained model asked the same questions with the images removed from
the prompt: what the LLM answers from the text alone. The gap between the two is what the model
gets from looking.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from omnifuse.data.sample import ImagePart, Sample
from omnifuse.progress import progress_bar
from omnifuse.serve.engine import Engine, GenerationConfig

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (VQA-style)."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def without_media(sample: Sample) -> Sample:
    messages = tuple(
        replace(m, parts=tuple(p for p in m.parts if not isinstance(p, ImagePart))) for m in sample.messages
    )
    return replace(sample, messages=messages)


@dataclass
class VQAResult:
    accuracy: float
    n: int
    per_type: dict[str, dict[str, float]]
    predictions: list[dict]

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "n": self.n, "per_type": self.per_type}


def evaluate_vqa(
    engine: Engine,
    samples: Sequence[Sample],
    cfg: GenerationConfig,
    batch_size: int = 32,
    blind: bool = False,
    progress: bool = True,
    label: str = "eval",
) -> VQAResult:
    """Answer every sample's question (its prompt) and score it against the last assistant turn."""
    predictions: list[dict] = []
    with progress_bar(label, len(samples), enabled=progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = list(samples[start : start + batch_size])
            prompts = [without_media(s) for s in chunk] if blind else chunk
            answers = engine.generate(prompts, cfg)
            for s, pred in zip(chunk, answers, strict=True):
                predictions.append(
                    {
                        "id": s.id,
                        "question_type": str(s.meta.get("question_type", "all")),
                        "answer": s.answer(),
                        "prediction": pred,
                        "correct": exact_match(pred, s.answer()),
                    }
                )
            bar.advance(len(chunk))
    by_type: dict[str, list[bool]] = defaultdict(list)
    for p in predictions:
        by_type[p["question_type"]].append(p["correct"])
    per_type = {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(by_type.items())}
    n = len(predictions)
    acc = sum(p["correct"] for p in predictions) / n if n else 0.0
    return VQAResult(acc, n, per_type, predictions)
