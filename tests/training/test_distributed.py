"""Two processes (gloo, launched by torch's own launcher, torchrun) train the tiny model to the same losses
and weights as one process with the same global batch; a two-process run killed mid-stage resumes in one
process to the weights of the uninterrupted run."""

from __future__ import annotations

import json
import os
import socket
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
TESTS = str(Path(__file__).parents[1])
SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny import make_parts, tiny_recipe_dict
from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
raw = json.loads(Path(sys.argv[1]).read_text())
recipe = parse_recipe(raw, overrides=sys.argv[4:])
train(recipe, Path(sys.argv[2]), resume=sys.argv[3] == "1", parts=make_parts(), progress=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, raw: dict, out: Path, nproc: int, overrides=(), resume=False, wait=True):
    script, recipe = tmp_path / "train_dist.py", tmp_path / f"recipe-{out.name}.json"
    script.write_text(SCRIPT.format(tests=TESTS))
    recipe.write_text(json.dumps(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "--master-addr=127.0.0.1", str(script), str(recipe), str(out),
           "1" if resume else "0", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return output


FSDP = ["runtime.distributed.strategy=fsdp"]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_key_bias(weights: dict) -> dict:
    """The key projection's bias of an attention layer gets an exactly-zero gradient (adding a constant to
    every key leaves the softmax unchanged), so its values are float noise that Adam scales to lr-sized
    steps, in either run alike; it is left out of the comparison (the query and value biases stay in)."""
    out = dict(weights)
    for k, v in weights.items():
        if k.endswith("in_proj_bias"):
            d = v.shape[0] // 3
            out[k] = torch.cat([v[:d], v[2 * d :]])
    return out


def assert_same_run(a: Path, b: Path, tol: float = 1e-5) -> None:
    assert losses(a) == pytest.approx(losses(b), abs=tol)
    wa, wb = (without_key_bias(load_file(str(r / "model.safetensors"))) for r in (a, b))
    assert wa.keys() == wb.keys()
    worst, key = max((float((wa[k] - wb[k]).abs().max()), k) for k in wa)
    assert worst < tol, (key, worst, float(wa[key].abs().max()))


def halve_batches(raw: dict) -> list[str]:
    return [f"stages.{i}.batch_size={s['batch_size'] // 2}" for i, s in enumerate(raw["stages"])]


def test_two_processes_match_one_with_the_same_global_batch_mlp_and_lora(tmp_path, color_data):
    raw = tiny_recipe_dict(color_data)  # stage 1: MLP connector; stage 2: connector + LoRA, grad_accum 2
    train(parse_recipe(raw), tmp_path / "one", parts=make_parts(), progress=False)
    output = launch(tmp_path, raw, tmp_path / "two", 2, halve_batches(raw))
    assert "global batch 4" in output and "global batch 8" in output
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert json.loads((tmp_path / "two" / "status.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("strategy", [[], FSDP], ids=["ddp", "fsdp"])
def test_two_processes_match_one_with_cross_attention_fusion(tmp_path, color_data, strategy):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
    raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    raw["stages"] = [
        {"name": "align", "trainable": {"connectors": "full", "fusion": "full"},
         "lr": {"connectors": 3e-3, "fusion": 3e-3}, "steps": 4, "batch_size": 4, "save_every": 2},
    ]  # fmt: skip
    train(parse_recipe(raw), tmp_path / "one", parts=make_parts(), progress=False)
    launch(tmp_path, raw, tmp_path / "two", 2, [*halve_batches(raw), *strategy])
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_fsdp_two_processes_match_one_process_with_lora(tmp_path, color_data):
    """torch's fully_shard (FSDP2) on gloo: each decoder layer a unit, the rest the root unit; the
    checkpoints and weights are gathered into the one-process layout."""
    raw = tiny_recipe_dict(color_data)
    train(parse_recipe(raw), tmp_path / "one", parts=make_parts(), progress=False)
    output = launch(tmp_path, raw, tmp_path / "two", 2, [*halve_batches(raw), *FSDP])
    assert "2 processes (fsdp: 3 sharded units)" in output  # two decoder layers and the root
    assert_same_run(tmp_path / "one", tmp_path / "two")
    saved = load_file(str(tmp_path / "two" / "checkpoint" / "optimizer.safetensors"))
    reference = load_file(str(tmp_path / "one" / "checkpoint" / "optimizer.safetensors"))
    assert saved.keys() == reference.keys()  # whole moments, not one process's shard
    assert all(saved[k].shape == reference[k].shape for k in saved)


def kill_mid_stage_two(proc, run: Path) -> None:
    """Kill the launcher and its workers once the checkpoint is inside stage 2 (step ≥ 2)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        state = run / "checkpoint" / "state.json"
        try:
            progress = json.loads(state.read_text())["progress"]
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being swapped in
            progress = {}
        if (progress.get("stage"), progress.get("step", 0) >= 2) == (1, True):  # mid-stage 2
            break
        time.sleep(0.01)
    subprocess.run(["pkill", "-9", "-f", str(run)], check=False)  # the launcher and its two workers
    proc.wait(60)
    progress = json.loads((run / "checkpoint" / "state.json").read_text())["progress"]
    assert progress["processes"] == 2 and progress["stage"] == 1 and 2 <= progress["step"] < 8
    assert not (run / "model.safetensors").exists()


@pytest.mark.parametrize("strategy", [[], FSDP], ids=["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_in_one_process_to_the_same_weights(tmp_path, color_data, strategy):
    raw = tiny_recipe_dict(color_data)
    raw["stages"][1]["steps"] = 8
    train(parse_recipe(raw), tmp_path / "reference", parts=make_parts(), progress=False)
    run = tmp_path / "killed"
    kill_mid_stage_two(launch(tmp_path, raw, run, 2, [*halve_batches(raw), *strategy], wait=False), run)
    # One process now: each of its steps runs the two micro-batches the two processes ran.
    res = train(parse_recipe(raw, overrides=halve_batches(raw)), run, resume=True, parts=make_parts(),
                progress=False)  # fmt: skip
    assert res.steps > 0
    assert_same_run(tmp_path / "reference", run)
