"""--fastv-keep / --fastv-layer: checked before any model loads, and an evaluation records the pruning it
answered with (eval.json "fastv")."""

from __future__ import annotations

import json

import pytest
import torch

from fake_engine import fake_engine_run
from omnifuse.cli.common import fastv_option
from omnifuse.errors import OmnifuseError
from omnifuse.eval import runner
from omnifuse.recipe import FastVSpec


def test_options_become_a_spec_or_a_clear_error():
    assert fastv_option(None, None) is None  # the recipe's own setting
    spec = fastv_option(0.5, None)
    assert (spec.layer, spec.keep) == (2, 0.5)
    assert fastv_option(0.25, 3) == FastVSpec(layer=3, keep=0.25)
    for keep, layer, said in ((None, 2, "--fastv-keep too"), (0.0, None, "in \\(0, 1\\]"), (1.5, None, "in \\(0, 1\\]"),
                              (0.5, 0, "at least 1")):  # fmt: skip
        with pytest.raises(OmnifuseError, match=said):
            fastv_option(keep, layer)


def test_evaluation_uses_and_records_the_override(color_data, tmp_path, monkeypatch):
    run, recipe, built = fake_engine_run(tmp_path, monkeypatch)
    model = torch.nn.Linear(1, 1)
    override = FastVSpec(layer=3, keep=0.25)
    runner.evaluate_run(
        run, data=str(color_data), progress=False, loaded=(recipe, model, None), fastv=override
    )
    assert [(b["pruning"].layer, b["pruning"].keep) for b in built] == [(3, 0.25)]
    assert json.loads((run.path / "eval.json").read_text())["fastv"] == {"layer": 3, "keep": 0.25}
