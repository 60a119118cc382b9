"""Which metrics score a sample: a small registry, task name → metrics.

A sample says what kind of answer it asks for in ``meta["task"]`` (``"caption"``, ...; converters and
built-in data sets set it). A sample without one is a ``"vqa"`` sample: exact match after normalisation
(the VQAv2 rule with several answers), scored by :mod:`omnifuse.eval.vqa` as before. ``omnifuse eval``
generates an answer for every sample, then groups the samples by task (:func:`group_by_task`) and scores
every group other than ``vqa`` with the :class:`TaskMetrics` registered under its name
(:func:`score_tasks`); eval.json holds each summary under ``tasks.<name>``, the report a section each.
Dispatch is this table, never a data-set or file name.

Adding a task's metrics (grounding / IoU, say):

1. write a module (e.g. ``omnifuse/eval/grounding.py``) with a function
   ``score(predictions: list[str], samples: list[Sample]) -> TaskScore`` (one prediction per sample,
   in order: the generated text; read the references from the samples, e.g. their ``meta``) and a
   module-level ``GROUNDING = TaskMetrics("grounding", "Grounding", score)``;
2. add one line to :data:`BUILTIN` below, ``"grounding": "omnifuse.eval.grounding:GROUNDING"`` (loaded on
   first use, so this module stays light); a plugin outside omnifuse calls :func:`register` instead;
3. have the converter or data set write ``meta.task: grounding`` on its samples.

Each :class:`Metric` carries its 95 % interval; bootstrap over samples (images, for captions) with
:func:`omnifuse.eval.stats.bootstrap_ci`, seeded, so an evaluation repeats exactly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError

DEFAULT_TASK = "vqa"  # samples without meta.task: exact-match VQA (omnifuse.eval.vqa), not in the table

# task name → "module:ATTRIBUTE" of its TaskMetrics, imported on first use.
BUILTIN: dict[str, str] = {
    "caption": "omnifuse.eval.captioning:CAPTION",
}

_registered: dict[str, TaskMetrics] = {}


@dataclass(frozen=True)
class Metric:
    score: float
    ci95: tuple[float, float] | None = None
    scale: float = 1.0  # how the report prints it: score × scale (e.g. 100 for BLEU's 0..100 convention)

    def summary(self) -> dict:
        out: dict = {"score": self.score}
        if self.ci95 is not None:
            out["ci95"] = list(self.ci95)
        return out


@dataclass(frozen=True)
class TaskScore:
    """One task's scores over its samples: the metrics (first = headline), the sample count, a note on
    how they were computed (shown in reports), and per-sample fields added to predictions.jsonl."""

    metrics: dict[str, Metric]
    n: int
    note: str = ""
    per_sample: list[dict] = field(default_factory=list)  # one dict per scored sample, in order
    extra: dict = field(default_factory=dict)  # more JSON-able facts for eval.json

    def summary(self) -> dict:
        out = {"n": self.n, "metrics": {k: m.summary() for k, m in self.metrics.items()}}
        if self.note:
            out["note"] = self.note
        return out | self.extra


@dataclass(frozen=True)
class TaskMetrics:
    name: str
    title: str  # report heading, e.g. "Captioning"
    score: Callable[[list[str], list[Sample]], TaskScore]


def register(metrics: TaskMetrics) -> None:
    """Add (or replace) a task's metrics at run time (plugins; built-ins go in :data:`BUILTIN`)."""
    _registered[metrics.name] = metrics


def known_tasks() -> list[str]:
    return sorted({DEFAULT_TASK, *BUILTIN, *_registered})


def metrics_for(task: str) -> TaskMetrics:
    if task in _registered:
        return _registered[task]
    if task not in BUILTIN:
        raise OmnifuseError(
            f"no metrics for task {task!r} (a sample's meta.task); known tasks: {', '.join(known_tasks())}"
        )
    module, _, attr = BUILTIN[task].partition(":")
    _registered[task] = getattr(importlib.import_module(module), attr)
    return _registered[task]


def task_of(sample: Sample) -> str:
    task = sample.meta.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or not task:
        raise OmnifuseError(f"sample {sample.id}: meta.task must be a task name, got {task!r}")
    return task


def group_by_task(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """Task name → indices of its samples (in order), checking every task has metrics."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(task_of(s), []).append(i)
    for task in groups:
        if task != DEFAULT_TASK:
            metrics_for(task)  # an unknown task fails here, before anything is scored
    return groups


def score_tasks(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, TaskScore]:
    """Score every group of samples whose task is not the default (VQA) with its registered metrics."""
    if len(samples) != len(predictions):
        raise OmnifuseError(f"{len(predictions)} predictions for {len(samples)} samples")
    out = {}
    for task, idx in group_by_task(samples).items():
        if task == DEFAULT_TASK:
            continue
        out[task] = metrics_for(task).score([predictions[i] for i in idx], [samples[i] for i in idx])
    return out
