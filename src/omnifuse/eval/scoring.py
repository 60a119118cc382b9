"""Which metric scores a generated answer: a table from a sample's ``meta.task`` to a per-sample metric.

``omnifuse eval`` (and evaluation during and after training) answers every sample and scores the answer
with the metric its sample asks for, so one data set can mix kinds of question (grounding boxes beside
VQA answers, as shapes-grounding does). A sample without ``meta.task``, or with a task not in
:data:`METRICS`, is scored as VQA (normalised exact match, :func:`omnifuse.eval.metrics.vqa_score`). A
sample without ``meta.task`` whose reference answer holds a Qwen-VL box (``<box>(x1,y1),(x2,y2)</box>``)
is scored as grounding, so RefCOCO-style data converted elsewhere is scored as a user expects.

A metric's ``score`` returns the fields of the sample's prediction record — at least ``score`` (in
[0, 1], the number averaged into the accuracy column with its bootstrap interval) and ``correct`` — and
its ``summarise`` (optional) the aggregate over all records (e.g. mean IoU per question type), stored in
eval.json under ``metrics.<name>``. To add a metric, add one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omnifuse.data.boxes import has_box
from omnifuse.data.sample import Sample
from omnifuse.eval.captioning import caption_table, score_caption, summarise_captions
from omnifuse.eval.grounding import boxes_outside_view, grounding_table, score_grounding, summarise_grounding

Table = tuple[str, tuple[str, ...], list[tuple[str, ...]]]


@dataclass(frozen=True)
class SampleMetric:
    name: str
    score: Callable[[str, Sample], dict]  # (prediction, sample) → record fields: score, correct, ...
    summarise: Callable[[Sequence[dict]], dict | None] | None = None  # all records → aggregate (or None)
    table: Callable[[dict], Table] | None = None  # aggregate → (title, columns, rows) for eval's printout


GROUNDING = SampleMetric("grounding", score_grounding, summarise_grounding, grounding_table)
CAPTION = SampleMetric(
    "caption", score_caption, summarise_captions, caption_table
)  # BLEU-4, CIDEr-D, ROUGE-L

# meta.task → metric; tasks not listed here (and "vqa") are scored as VQA exact match.
METRICS: dict[str, SampleMetric] = {
    "grounding": GROUNDING,
    "grounded_caption": GROUNDING,
    "caption": CAPTION,
}


def metric_for(sample: Sample) -> SampleMetric | None:
    """The metric of ``sample`` (None: the VQA default)."""
    task = sample.meta.get("task")
    if isinstance(task, str):
        return METRICS.get(task)
    return GROUNDING if has_box(sample.answer()) else None


def grounding_view(model, samples: Sequence[Sample]) -> dict | None:
    """How many reference boxes of the grounding samples the model's image encoder cannot see whole (a
    centre crop, :func:`omnifuse.eval.grounding.boxes_outside_view`); None without an image encoder or
    grounding samples."""
    encoders = getattr(model, "encoders", None)  # evaluation's stand-in engines in tests have no model
    if encoders is None or "image" not in encoders:
        return None
    grounded = [s for s in samples if metric_for(s) is GROUNDING]
    return boxes_outside_view(grounded, encoders["image"].input_region) if grounded else None


def metric_summaries(records: Sequence[dict]) -> dict:
    """{metric name: aggregate} over the prediction records, for each metric that summarises."""
    out = {}
    for metric in {m.name: m for m in METRICS.values()}.values():
        summary = metric.summarise(records) if metric.summarise is not None else None
        if summary is not None:
            out[metric.name] = summary
    return out


def metric_tables(summaries: dict) -> list[Table]:
    """The printable tables of :func:`metric_summaries`' aggregates (metrics without a table are skipped)."""
    by_name = {m.name: m for m in METRICS.values()}
    return [
        by_name[name].table(summary)
        for name, summary in summaries.items()
        if name in by_name and by_name[name].table is not None
    ]


def metric_markdown(summaries: dict | None) -> list[str]:
    """report.md's sections for the per-sample metrics' tables (grounding, ...), one markdown table each."""
    lines: list[str] = []
    for title, columns, rows in metric_tables(summaries or {}):
        heading, *notes = title.split("\n")
        lines += [f"## {heading[0].upper()}{heading[1:]}", ""]
        lines += [*(f"> {n}" for n in notes), ""] if notes else []
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return lines
