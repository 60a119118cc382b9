"""runtime.packing in training: a packed run follows the padded one, objectives that cannot pack say so,
and the combinations packing cannot serve are refused when the recipe is read."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from omnifuse.cli import main
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import parse_recipe
from omnifuse.training import objectives
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


def _losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _xattn(raw: dict) -> dict:
    raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
    raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    raw["stages"][0]["trainable"]["fusion"] = "full"
    raw["stages"][0]["lr"]["fusion"] = 1e-2
    return raw


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_a_packed_run_trains_like_the_padded_one(tmp_path, color_data, fusion):
    raw = tiny_recipe_dict(color_data)
    raw = _xattn(raw) if fusion == "cross_attention" else raw
    padded = parse_recipe(raw)
    packed = parse_recipe(raw, overrides=["runtime.packing=true", "runtime.packing_length=1000"])
    train(padded, tmp_path / "padded", parts=make_parts(), progress=False)
    train(packed, tmp_path / "packed", parts=make_parts(), progress=False)
    a, b = _losses(tmp_path / "padded"), _losses(tmp_path / "packed")
    assert len(a) == len(b) == 8 and a[0] > a[-1]  # both stages ran and learned
    assert b == pytest.approx(a, abs=1e-5)  # measured: at most 1e-6 apart


def test_objectives_that_cannot_pack_train_unpacked_and_say_so(color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=["runtime.packing=true"])
    notes: list[str] = []
    step = objectives.with_packing(objectives.generative_step, recipe.stages[0], recipe.runtime, notes.append)
    assert step.func is objectives.packed_generative_step and not notes
    stage = SimpleNamespace(name="kd", objective=SimpleNamespace(type="distill"))
    kept = objectives.with_packing(objectives.distill_step, stage, recipe.runtime, notes.append)
    assert kept is objectives.distill_step
    assert len(notes) == 1 and "stage kd: objective distill trains unpacked" in notes[0]
    off = parse_recipe(tiny_recipe_dict(color_data))
    step = objectives.with_packing(objectives.generative_step, off.stages[0], off.runtime, notes.append)
    assert step is objectives.generative_step


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["runtime.packing=true", "privacy={noise_multiplier: 1.0, max_grad_norm: 0.5, delta: 1e-3}"],
         "Opacus' per-sample gradients are per row"),
        (["runtime.packing_length=512"], "runtime.packing is false"),
        (["runtime.packing=true", "runtime.packing_length=512", "runtime.attention=flash_attention_2"],
         "only when a micro-batch is one row"),
    ],
)  # fmt: skip
def test_bad_packing_combinations_are_refused(color_data, overrides, match):
    with pytest.raises(OmnifuseError, match=match):
        parse_recipe(tiny_recipe_dict(color_data), overrides=overrides)


def test_validate_refuses_packing_for_a_classifier(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        "task: classify\nname: toy\n"
        "model: {encoders: {image: {type: pixels, size: 8}}, fusion: {type: concat, dim: 16}, hidden: 16}\n"
        "data: {train: x.jsonl, eval: x.jsonl}\nruntime: {packing: true}\n"
    )
    assert main(["validate", str(path)]) != 0
    err = capsys.readouterr().err
    assert "runtime.packing: true: task classify" in err and "Traceback" not in err, err


def test_an_attention_that_ignores_restarting_positions_is_refused(color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=["runtime.packing=true"])
    llm = SimpleNamespace(config=SimpleNamespace(_attn_implementation="paged_sdpa"))
    with pytest.raises(OmnifuseError, match="'paged_sdpa' is not known to keep packed samples apart"):
        objectives.packed_generative_step(SimpleNamespace(llm=llm), None, [], recipe.stages[0])
