"""Evaluation during training runs on the model being trained and leaves training unchanged."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from omnifuse.data.sample import select_subset
from omnifuse.data.sources import load_data
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training import evaluation
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


def test_eval_every_n_steps_logs_scores_and_changes_nothing_else(tmp_path, color_data, monkeypatch):
    seen = []

    def recording(engine, *args, **kwargs):
        assert not engine.model.training  # evaluated in eval mode ...
        result = evaluate_vqa(engine, *args, **kwargs)
        state = engine.model.connectors.state_dict()
        seen.append(({f"connectors.{k}": v.clone() for k, v in state.items()}, result))
        return result

    monkeypatch.setattr(evaluation, "evaluate_vqa", recording)
    raw = tiny_recipe_dict(color_data)
    raw["eval"] |= {"every": 3, "during_limit": 9}
    train(parse_recipe(raw), tmp_path / "with", parts=make_parts(), progress=False)
    train(
        parse_recipe(tiny_recipe_dict(color_data)), tmp_path / "without", parts=make_parts(), progress=False
    )

    lines = [json.loads(x) for x in (tmp_path / "with" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["stage"], r["step"]) for r in lines if "eval_accuracy" in r]
    # Every 3rd step of each 4-step stage and each stage's last step.
    assert evals == [("align", 3), ("align", 4), ("instruct", 3), ("instruct", 4)]
    assert all(r["eval_n"] == 9 and 0 <= r["eval_accuracy"] <= 1 for r in lines if "eval_accuracy" in r)

    # Training is the same with or without evaluation in between (greedy decoding draws no random
    # numbers; the model goes back to training mode).
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("with", "without"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    plain = [json.loads(x)["loss"] for x in (tmp_path / "without" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == plain

    # The last evaluation saw the finished model: the same answers, word for word, on the same subset.
    recipe, model, processor = load_model(RunDir(tmp_path / "with"), progress=False, parts=make_parts())
    samples = select_subset(load_data(recipe.data.eval), 9, recipe.data.eval_seed)
    g = recipe.generation
    cfg = GenerationConfig(g.max_new_tokens, g.temperature, g.top_p, seed=recipe.seed)
    final = evaluate_vqa(Engine(model, processor), samples, cfg, recipe.eval.batch_size, progress=False)
    assert len(seen) == 4
    last_weights, last_result = seen[-1]
    assert all((last_weights[k] == a[k]).all() for k in last_weights)  # the trained weights, no copy
    assert any((seen[0][0][k] != a[k]).any() for k in last_weights)  # an earlier one saw an earlier model
    assert [p["prediction"] for p in last_result.predictions] == [p["prediction"] for p in final.predictions]
    assert lines[-1]["eval_accuracy"] == pytest.approx(final.accuracy)


def test_eval_every_must_be_positive(color_data):
    from omnifuse.errors import OmnifuseError

    raw = tiny_recipe_dict(color_data)
    raw["eval"] |= {"every": 0}
    with pytest.raises(OmnifuseError, match="eval.every"):
        parse_recipe(raw)
