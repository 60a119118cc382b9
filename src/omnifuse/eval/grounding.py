"""Grounding metrics (Qwen-VL / RefCOCO): accuracy at IoU ≥ 0.5 and mean IoU, per sample and per
question type, with 95 % bootstrap intervals.

A reference answer holds boxes in Qwen-VL's text form (:mod:`omnifuse.data.boxes`). One reference box
(a referring expression): the prediction's *first* well-formed box is compared with it, as Qwen-VL's
RefCOCO evaluation does. Several reference boxes (a grounded caption): each reference phrase is matched
with the prediction's boxes of the same phrase (normalised as VQA answers are), and the best IoU counts;
the sample's IoU is the mean over its reference boxes and its score the share of them hit at ≥ 0.5.

A prediction with no parsable box — free text, a truncated ``<box>(12,3``, coordinates out of range, a
box with x2 ≤ x1 — has IoU 0 and scores 0; nothing here raises on model output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from omnifuse.data.boxes import Box, Grounded, parse_grounding
from omnifuse.data.boxes import iou as box_iou
from omnifuse.data.sample import Sample
from omnifuse.eval.metrics import normalize_answer
from omnifuse.eval.stats import bootstrap_ci

IOU_THRESHOLD = 0.5
CI_RESAMPLES = 2000


def _reference_pairs(reference: Sequence[Grounded]) -> list[tuple[str | None, Box]]:
    return [(g.phrase, b) for g in reference for b in g.boxes]


def grounding_scores(prediction: str, reference_text: str) -> dict:
    """``{"iou", "hit", "parsed"}`` of one prediction against the reference answer's boxes.

    ``parsed``: whether the prediction held at least one well-formed box (malformed ones count as
    misses). A reference without any box is a data error, scored like a missed box (iou 0)."""
    predicted = parse_grounding(prediction)
    refs = _reference_pairs(parse_grounding(reference_text))
    parsed = any(b.valid for g in predicted for b in g.boxes)
    if not refs:
        return {"iou": 0.0, "hit": 0.0, "parsed": parsed}
    if len(refs) == 1:
        first = predicted[0].boxes[0] if predicted else None
        value = box_iou(first, refs[0][1])
        return {"iou": value, "hit": float(value >= IOU_THRESHOLD), "parsed": parsed}
    by_phrase: dict[str, list[Box]] = defaultdict(list)
    for g in predicted:
        by_phrase[normalize_answer(g.phrase or "")].extend(g.boxes)
    ious = [
        max((box_iou(p, box) for p in by_phrase.get(normalize_answer(phrase or ""), [])), default=0.0)
        for phrase, box in refs
    ]
    hits = [float(v >= IOU_THRESHOLD) for v in ious]
    return {"iou": sum(ious) / len(ious), "hit": sum(hits) / len(hits), "parsed": parsed}


def score_grounding(prediction: str, sample: Sample) -> dict:
    """The prediction record's fields for a grounding sample: ``score`` is Acc@0.5 (a grounded
    caption: the share of its boxes hit), ``correct`` whether every box was hit, ``iou`` the IoU."""
    scores = grounding_scores(prediction, sample.answer())
    return {
        "score": scores["hit"],
        "correct": scores["hit"] == 1.0,
        "iou": scores["iou"],
        "box_parsed": scores["parsed"],
    }


def _ci(values: Sequence[float]) -> list[float]:
    ci = bootstrap_ci(values, n_resamples=CI_RESAMPLES, seed=0)
    return [ci.low, ci.high]


def _row(values_hit: list[float], values_iou: list[float], parsed: list[bool]) -> dict:
    n = len(values_hit)
    return {
        "n": n,
        "acc@0.5": sum(values_hit) / n,
        "acc@0.5_ci95": _ci(values_hit),
        "miou": sum(values_iou) / n,
        "miou_ci95": _ci(values_iou),
        "parsed": sum(parsed) / n,
    }


def summarise_grounding(records: Sequence[dict]) -> dict | None:
    """Acc@0.5 and mean IoU [95 % CI] over the records that carry an ``iou``, overall and per
    question type; None when there are none."""
    rows = [r for r in records if "iou" in r]
    if not rows:
        return None
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r.get("question_type", "all")].append(r)

    def row(rs: list[dict]) -> dict:
        return _row([r["score"] for r in rs], [r["iou"] for r in rs], [bool(r.get("box_parsed")) for r in rs])

    return {"all": row(rows), "per_type": {t: row(rs) for t, rs in sorted(groups.items())}}


def grounding_table(summary: dict) -> tuple[str, tuple[str, ...], list[tuple[str, ...]]]:
    """Title, column names and rows (question type, n, Acc@0.5 [CI], mIoU [CI], boxes parsed) for printing."""

    def cell(value: float, ci: list[float]) -> str:
        return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    rows = []
    for name, v in [("all", summary["all"]), *summary["per_type"].items()]:
        rows.append(
            (name, str(v["n"]), cell(v["acc@0.5"], v["acc@0.5_ci95"]), cell(v["miou"], v["miou_ci95"]),
             f"{100 * v['parsed']:.1f} %")
        )  # fmt: skip
    title = "grounding: accuracy at IoU ≥ 0.5 and mean IoU [95 % bootstrap CI]"
    note = view_note(summary.get("view"))
    if note:
        title += f"\nwarning: {note}"
    return title, ("question type", "n", "Acc@0.5 %", "mIoU %", "box parsed"), rows


def boxes_outside_view(samples: Sequence[Sample], input_region) -> dict | None:
    """How many reference boxes of these grounding samples (in their last image) the image encoder's view
    cuts: ``input_region(w, h)`` is the part of a ``w``×``h`` image the encoder keeps (a centre crop keeps
    less than the whole image).
    ``{"boxes", "cut", "outside"}``: boxes partly / wholly outside the view; None without grounding
    samples. A cut box is one the model cannot see whole, yet its reference coordinates are relative to
    the whole image (Qwen-VL's form), so such an encoder should not be used for grounding (crop: false)."""
    from PIL import Image

    from omnifuse.data.boxes import box_in_region, denormalise

    total = cut = outside = 0
    for s in samples:
        if s.images():
            source = s.images()[-1]  # boxes refer to the latest image, as Qwen-VL draws them
            try:
                size = source.size if isinstance(source, Image.Image) else Image.open(source).size
            except (OSError, ValueError):
                continue  # the evaluation itself reports unreadable images
            region = input_region(*size)
            for _phrase, box in _reference_pairs(parse_grounding(s.answer())):
                total += 1
                _, fraction = box_in_region(denormalise(box, *size), region)
                cut += fraction < 0.999
                outside += fraction == 0.0
    return None if total == 0 else {"boxes": total, "cut": cut, "outside": outside}


def view_note(view: dict | None) -> str | None:
    """One line for eval's printout when the encoder's view cut reference boxes."""
    if not view or not view["cut"]:
        return None
    return (
        f"{view['cut']} of {view['boxes']} reference boxes extend past the part of the image the encoder sees "
        f"({view['outside']} wholly outside): its centre crop cuts them, while boxes are given relative to the "
        "whole image; use crop: false (or an encoder without a crop) for grounding (docs/grounding.md)"
    )
