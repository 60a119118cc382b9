"""The task → metrics table: samples are grouped by meta.task and each group scored by its own metrics."""

from __future__ import annotations

import pytest

from omnifuse.data.sample import Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.eval import task_metrics
from omnifuse.eval.task_metrics import Metric, TaskMetrics, TaskScore, group_by_task, register, score_tasks


def _sample(i: int, task: str | None, answer: str = "x") -> Sample:
    meta = {} if task is None else {"task": task}
    msgs = (Message("user", (TextPart("q"),)), Message("assistant", (TextPart(answer),)))
    return Sample(f"s{i}", msgs, meta)


def _length_metric(predictions, samples):
    seen.append([s.id for s in samples])
    total = sum(len(p) for p in predictions)
    return TaskScore({"chars": Metric(float(total))}, len(samples))


seen: list[list[str]] = []


def test_groups_by_meta_task_and_scores_each_group_with_its_own_metrics(monkeypatch):
    monkeypatch.setattr(task_metrics, "_registered", {})
    register(TaskMetrics("toy", "Toy", _length_metric))
    seen.clear()
    samples = [_sample(0, None), _sample(1, "toy"), _sample(2, "vqa"), _sample(3, "toy")]
    assert group_by_task(samples) == {"vqa": [0, 2], "toy": [1, 3]}
    scores = score_tasks(samples, ["a", "bb", "ccc", "dddd"])
    assert list(scores) == ["toy"]  # VQA samples stay with the exact-match evaluation
    assert seen == [["s1", "s3"]]
    assert scores["toy"].summary() == {"n": 2, "metrics": {"chars": {"score": 6.0}}}


def test_unknown_task_names_the_known_ones(monkeypatch):
    monkeypatch.setattr(task_metrics, "_registered", {})
    with pytest.raises(OmnifuseError, match=r"task 'poem'.*caption.*vqa"):
        group_by_task([_sample(0, "poem")])
    with pytest.raises(OmnifuseError, match="meta.task must be a task name"):
        group_by_task([_sample(0, 3)])  # type: ignore[arg-type]


def test_prediction_count_must_match():
    with pytest.raises(OmnifuseError, match="1 predictions for 2 samples"):
        score_tasks([_sample(0, None), _sample(1, None)], ["a"])
