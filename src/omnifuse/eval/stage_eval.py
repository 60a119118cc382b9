"""Per-task metrics after each training stage (recipe ``eval.after_stage``): RUN/stage_eval.jsonl and the
report's "stage × task" table.

At the end of each generative stage the model being trained answers the seeded eval subset
(``eval.during_limit`` samples of ``data.eval``, the subset ``eval.every`` uses; or as many of each data
set ``eval.stage_data`` names, e.g. VQA, caption and grounding test sets side by side) through the same
:func:`omnifuse.eval.vqa.evaluate_vqa` as ``omnifuse eval``. Its prediction records are then grouped by
the sample's task (``meta.task``; a sample without one is ``grounding`` when its answer holds a box, else
``vqa``) and each group is summarised with the task's own metric from :mod:`omnifuse.eval.scoring`:
VQA accuracy, captioning BLEU-4 / CIDEr-D / ROUGE-L, grounding Acc@IoU≥0.5 and mean IoU — each with the
95 % bootstrap interval that metric's code gives.

One JSON line per stage::

    {"stage": "multitask", "stage_index": 1, "step": 160, "n": 200, "accuracy": 0.41, "seconds": 31.2,
     "tasks": {"vqa": {"metric": "vqa", "n": 120, "accuracy": 0.62, "accuracy_ci95": [0.53, 0.70]},
               "caption": {"metric": "caption", "n": 40, "cider_d": 0.71, "cider_d_ci95": [...], ...},
               "grounding": {"metric": "grounding", "n": 40, "acc@0.5": 0.3, "miou": 0.33, ...}}}

The file is rewritten atomically with each row (a stage evaluated again replaces its row), and a resumed
run drops the rows after its checkpoint as it does metrics.jsonl's, so no stage appears twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from omnifuse.atomic import atomic_write_text
from omnifuse.data.boxes import has_box
from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.runfiles import read_records
from omnifuse.eval.scoring import metric_for
from omnifuse.eval.vqa import VQAResult, accuracy_ci

FILE = "stage_eval.jsonl"
# What the report reads back of a row (the task entries are checked where they are shown).
ROW = {"stage": str, "stage_index": int, "step": int, "n": int, "tasks": {"*": {"metric": str, "n": int}}}


def stage_samples(recipe) -> list[Sample]:
    """``eval.stage_data``'s samples: a seeded subset of ``eval.during_limit`` samples of each reference
    (``data.eval_seed``), one after another; [] without stage_data (the eval.every subset is used)."""
    refs = recipe.eval.stage_data or ()
    return [
        s
        for ref in refs
        for s in select_subset(load_data(ref), recipe.eval.during_limit, recipe.data.eval_seed)
    ]


def task_of(sample: Sample) -> str:
    """The sample's task name: ``meta.task``, else grounding for a reference box, else vqa."""
    task = sample.meta.get("task")
    if isinstance(task, str) and task:
        return task
    return "grounding" if has_box(sample.answer()) else "vqa"


def task_metrics(samples: Sequence[Sample], predictions: Sequence[dict]) -> dict[str, dict]:
    """{task: its metric's summary} over the prediction records of ``evaluate_vqa`` (same order as
    ``samples``)."""
    groups: dict[str, list[tuple[Sample, dict]]] = defaultdict(list)
    for s, p in zip(samples, predictions, strict=True):
        groups[task_of(s)].append((s, p))
    out: dict[str, dict] = {}
    for task, pairs in sorted(groups.items()):
        records = [p for _, p in pairs]
        metric = metric_for(pairs[0][0])
        summary = metric.summarise(records) if metric is not None and metric.summarise else None
        if metric is None or summary is None:  # VQA: the mean score (exact match / VQAv2 credit)
            scores = [p["score"] for p in records]
            out[task] = {"metric": "vqa", "n": len(scores), "accuracy": sum(scores) / len(scores),
                         "accuracy_ci95": list(accuracy_ci(scores))}  # fmt: skip
        elif metric.name == "grounding":
            out[task] = {"metric": "grounding", **summary["all"]}
        else:
            out[task] = {"metric": metric.name, **summary}
    return out


def stage_row(stage: str, stage_index: int, step: int, samples, result: VQAResult, seconds: float) -> dict:
    return {
        "stage": stage,
        "stage_index": stage_index,
        "step": step,
        "n": result.n,
        "accuracy": round(result.accuracy, 6),
        "seconds": round(seconds, 3),
        "tasks": task_metrics(samples, result.predictions),
    }


def write_stage_row(run_path: Path, row: dict) -> None:
    """Add ``row`` to RUN/stage_eval.jsonl (replacing an earlier row of the same stage), atomically."""
    path = run_path / FILE
    rows = read_stage_rows(run_path)
    rows = [r for r in rows if r["stage_index"] != row["stage_index"]] + [row]
    rows.sort(key=lambda r: r["stage_index"])
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_stage_rows(run_path: Path) -> list[dict]:
    """The rows of RUN/stage_eval.jsonl (none when the run has no such file)."""
    path = run_path / FILE
    return read_records(path, ROW, "per-stage evaluation file") if path.is_file() else []


def _ci_cell(value: float, ci, scale: float, unit: str = "") -> str:
    return f"{scale * value:.1f}{unit} [{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]"


def metric_cell(entry: dict) -> str:
    """One task's metric as table text, e.g. ``CIDEr-D 71.0 [60.2, 83.4] · BLEU-4 12.3 [9.9, 14.0]``."""
    kind = entry["metric"]
    if kind == "grounding":
        return (f"Acc@0.5 {_ci_cell(entry['acc@0.5'], entry['acc@0.5_ci95'], 100, ' %')} · "
                f"mIoU {_ci_cell(entry['miou'], entry['miou_ci95'], 100, ' %')}")  # fmt: skip
    if kind == "caption":
        return (f"CIDEr-D {_ci_cell(entry['cider_d'], entry['cider_d_ci95'], 100)} · "
                f"BLEU-4 {_ci_cell(entry['bleu4'], entry['bleu4_ci95'], 1)}")  # fmt: skip
    return f"accuracy {_ci_cell(entry['accuracy'], entry['accuracy_ci95'], 100, ' %')}"


def stage_task_table(rows: Sequence[dict], where: Path) -> tuple[list[str], list[list[str]]]:
    """Columns (stage, then one per task) and rows: each stage's metric of each task with its n."""
    tasks = sorted({t for r in rows for t in r["tasks"]})
    body = []
    try:
        for r in rows:
            cells = [f"{metric_cell(r['tasks'][t])} (n={r['tasks'][t]['n']})" if t in r["tasks"] else "–"
                     for t in tasks]  # fmt: skip
            body.append([f"{r['stage']} (step {r['step']})", *cells])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise OmnifuseError(
            f"{where}: a task entry is damaged ({type(exc).__name__}: {exc}); delete the file (only the "
            "report's stage table is drawn from it) or train the run again"
        ) from None
    return ["stage", *tasks], body


def stage_markdown(run_path: Path) -> list[str]:
    """report.md's section "Per-task metrics after each stage" (nothing when the run has no rows)."""
    rows = read_stage_rows(run_path)
    if not rows:
        return []
    columns, body = stage_task_table(rows, run_path / FILE)
    lines = [
        "## Per-task metrics after each stage",
        "",
        f"The model at the end of each stage on {rows[0]['n']} eval samples (eval.during_limit of data.eval, "
        "or of each eval.stage_data set), each task "
        "with its own metric and a 95 % bootstrap interval (CIDEr-D ×100; RUN/stage_eval.jsonl).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return [*lines, ""]
