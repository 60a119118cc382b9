"""The pure helpers of benchmarks/time_to_accuracy.py: the curve from metrics rows, time to target, the ratio."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"
_spec = importlib.util.spec_from_file_location("time_to_accuracy_bench", _PATH)
tta = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tta  # dataclasses look their module up there
_spec.loader.exec_module(tta)


def _rows(launch: float) -> list[dict]:
    # 4 steps of 1 s each, 0.5 s apart in wall time besides; evaluations of 10 s after steps 2 and 4.
    return [
        {"step": 1, "seconds": 1.0, "time": launch + 5.0},
        {"step": 2, "seconds": 1.0, "time": launch + 6.5, "eval_accuracy": 0.5, "eval_seconds": 10.0},
        {"note": "not a step row"},
        {"step": 1, "seconds": 1.0, "time": launch + 18.0},
        {"step": 2, "seconds": 1.0, "time": launch + 19.5, "eval_accuracy": 0.9, "eval_seconds": 10.0},
    ]


def test_curve_counts_steps_over_stages_and_excludes_eval_time():
    points = tta.curve(_rows(1000.0), 1000.0)
    assert [p.step for p in points] == [2, 4]
    assert [p.steps_s for p in points] == [2.0, 4.0]
    assert [p.wall_s for p in points] == [6.5, 9.5]  # 19.5 s since launch minus the first 10 s evaluation
    assert [p.accuracy for p in points] == [0.5, 0.9]


def test_time_to_target_is_the_first_point_reaching_it():
    points = tta.curve(_rows(0.0), 0.0)
    assert tta.time_to_target(points, 0.85, "wall_s") == 9.5
    assert tta.time_to_target(points, 0.5, "steps_s") == 2.0
    assert tta.time_to_target(points, 0.95, "wall_s") is None


def test_ratio_is_a_bound_when_a_side_misses_the_target():
    p = tta.Point
    fast = [p(1, 1.0, 2.0, 0.6), p(2, 2.0, 4.0, 0.9)]
    slow = [p(1, 2.0, 4.0, 0.5), p(2, 4.0, 8.0, 0.7), p(3, 6.0, 16.0, 0.88)]
    assert tta.ratio_text(fast, slow, 0.85, "wall_s") == "0.250"
    missed = slow[:2]
    assert tta.ratio_text(fast, missed, 0.85, "wall_s").startswith("≤ 0.500")
    assert tta.ratio_text(missed, fast, 0.85, "wall_s").startswith("≥ 2.000")
    assert tta.ratio_text(missed, missed, 0.85, "wall_s").startswith("undefined")


@pytest.mark.parametrize(
    ("steps", "warmup", "scale", "expected"),
    [(100, 10, 1.0, (100, 10)), (380, 20, 0.05, (19, 1)), (100, 10, 0.001, (1, 0))],
)
def test_scaled_keeps_at_least_one_step_and_warmup_below_it(steps, warmup, scale, expected):
    assert tta.scaled(steps, warmup, scale) == expected
