"""Evaluation sharded across two processes (torchrun, gloo) gives the predictions of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
from tiny import make_parts, tiny_recipe_dict
from omnifuse.data.sources import load_data
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.runtime import current_world
recipe = parse_recipe(tiny_recipe_dict(sys.argv[1]))
model, processor = build_model(recipe.model, **make_parts())
torch.manual_seed(1)
for p in [*model.connectors.parameters(), *model.llm.parameters()]:  # the image changes the answer
    p.data.normal_(0, 1.0)
processor.stop_ids = []  # an untrained model stops at once; let it say 4 tokens
Engine.decode = lambda self, ids: " ".join(map(str, ids))  # its tokens, special ones included
result = evaluate_vqa(Engine(model.eval(), processor), load_data(sys.argv[1]), GenerationConfig(4), 5,
                      progress=False)
if current_world().main:
    open(sys.argv[2], "w").write(json.dumps(result.predictions))
"""


def run(tmp_path, color_data, nproc: int) -> list[dict]:
    script, out = tmp_path / "evaluate.py", tmp_path / f"predictions-{nproc}.json"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1])))
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, str(script), str(color_data), str(out)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_answer_exactly_what_one_process_answers(tmp_path, color_data):
    one, two = run(tmp_path, color_data, 1), run(tmp_path, color_data, 2)
    assert len(one) == 24 and [p["id"] for p in two] == [p["id"] for p in one]
    assert [p["prediction"] for p in two] == [p["prediction"] for p in one]
    assert len({p["prediction"] for p in one}) > 1  # the predictions differ between samples
