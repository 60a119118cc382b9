"""Sweeps: recipe variants compared on the same data, seeds and budget (``omnifuse sweep``)."""

from omnifuse.sweep.report import mean_ci, summarize, write_report
from omnifuse.sweep.run import check_budget, run_sweep, sweep_task, training_samples
from omnifuse.sweep.spec import Sweep, SweepSpec, load_sweep, parse_sweep

__all__ = [
    "Sweep",
    "SweepSpec",
    "check_budget",
    "load_sweep",
    "mean_ci",
    "parse_sweep",
    "run_sweep",
    "summarize",
    "sweep_task",
    "training_samples",
    "write_report",
]
