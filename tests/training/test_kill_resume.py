"""Training survives SIGKILL at random points: every resume continues from an intact checkpoint and
the run ends with the same weights and loss as an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict

pytestmark = pytest.mark.slow

OVERRIDES = ["stages.0.steps=10", "stages.0.save_every=1", "stages.1.steps=10", "stages.1.save_every=3"]
TOTAL_STEPS = 20
SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny import make_parts, tiny_recipe_dict
from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
recipe = parse_recipe(tiny_recipe_dict(Path(sys.argv[1])), overrides={overrides!r})
train(recipe, Path(sys.argv[2]), resume=sys.argv[3] == "1", parts=make_parts(), progress=False)
"""


def logged_steps(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


def assert_checkpoint_intact(run: Path) -> None:
    ckpt = run / "checkpoint"
    if not ckpt.exists():  # killed before the first checkpoint, or inside commit_dir (see below)
        return
    state = json.loads((ckpt / "state.json").read_text())
    weights = load_file(str(ckpt / "weights.safetensors"))
    assert sorted(weights) == sorted(state["weights"])
    load_file(str(ckpt / "optimizer.safetensors"))
    load_file(str(ckpt / "rng.safetensors"))


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=OVERRIDES)
    train(recipe, tmp_path / "reference", parts=make_parts(), progress=False)

    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1]), overrides=OVERRIDES))
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(7)
    kills, resume = 0, False
    for _ in range(4):
        target = min(logged_steps(run) + rng.randrange(1, 6), TOTAL_STEPS - 1)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(color_data), str(run), "1" if resume else "0"], env=env
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and logged_steps(run) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere: mid-step, mid-checkpoint, mid-metrics line
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(60)
        assert_checkpoint_intact(run)
        resume = True
    final = subprocess.run(
        [sys.executable, str(script), str(color_data), str(run), "1"], env=env, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 3

    a = load_file(str(tmp_path / "reference" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)
    ref = [json.loads(x) for x in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage_index"], r["step"]) for r in got] == [(r["stage_index"], r["step"]) for r in ref]
    assert abs(got[-1]["loss"] - ref[-1]["loss"]) <= 1e-4
    assert not list(run.glob(".checkpoint.*"))  # no half-written checkpoint folders left behind


def test_a_kill_inside_the_checkpoint_swap_is_recovered(tmp_path):
    from omnifuse.atomic import recover_dir

    final = tmp_path / "checkpoint"
    old = tmp_path / ".checkpoint.old"
    old.mkdir()
    (old / "state.json").write_text("{}")
    half = tmp_path / ".checkpoint.abc123"  # a temporary folder a killed save left half-written
    half.mkdir()
    recover_dir(final)
    assert (final / "state.json").read_text() == "{}"
    assert not old.exists() and not half.exists()
    recover_dir(final)  # idempotent when nothing needs repair
    assert (final / "state.json").is_file()
