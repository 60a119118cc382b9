"""Structured MLP pruning: the pruned layers are genuinely smaller and consistent, the ranking drops
channels that contribute nothing, a pruned model saves and reloads with identical logits, and a recipe
stage that prunes trains, reloads and answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.export import export_run
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.models.prune import (
    channel_scores,
    kept_channels,
    load_pruning,
    mlp_blocks,
    mlp_parameters,
    prune_mlp,
    save_pruning,
)
from omnifuse.models.stages import changed_parameters, prepare_lora, unload_lora
from omnifuse.models.weights import load_weights, save_weights
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


def tiny(color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    model, proc = build_model(recipe.model, **make_parts())
    return recipe, model.eval(), proc


def logits(model, proc, samples):
    batch = proc.collate([proc.encode(s) for s in samples])
    with torch.no_grad():
        return model(**{**batch.model_inputs(), "labels": None}).logits


def test_pruned_layers_are_smaller_consistent_and_run(color_data):
    _, model, proc = tiny(color_data)
    samples = load_jsonl(color_data)
    before = mlp_parameters(model)
    scores = channel_scores(model, proc, samples[:8], batch_size=4)
    assert [len(s) for s in scores] == [64, 64]  # the tiny LLM: 2 layers, intermediate size 64
    prune_mlp(model, kept_channels(scores, 0.75))
    for layer in model.llm.model.layers:
        mlp = layer.mlp
        for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            assert type(linear) is nn.Linear
        assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 48
        assert mlp.gate_proj.weight.shape == (48, 32) and mlp.down_proj.weight.shape == (32, 48)
    assert model.llm.config.intermediate_size == 48
    assert mlp_parameters(model) == before * 3 // 4
    out = model(**proc.collate([proc.encode(s) for s in samples[:4]]).model_inputs())
    assert torch.isfinite(out.loss)


def test_channels_that_contribute_nothing_go_first(color_data):
    _, model, proc = tiny(color_data)
    with torch.no_grad():
        for block in mlp_blocks(model):
            block.linear(block.output).weight[:, :16] = 0  # channels 0-15 reach nothing
    scores = channel_scores(model, proc, load_jsonl(color_data)[:4])
    for kept in kept_channels(scores, 0.75):  # 48 of 64 kept: exactly the others
        assert kept.tolist() == list(range(16, 64))


def test_pruned_model_saves_and_reloads_with_identical_logits(color_data, tmp_path):
    recipe, model, proc = tiny(color_data)
    samples = load_jsonl(color_data)
    record = prune_mlp(model, kept_channels(channel_scores(model, proc, samples[:8]), 0.5))
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking adapters and connector, so that the reload has something to do
        for name, p in model.named_parameters():
            if "lora_" in name or name.startswith("connectors."):
                p.add_(torch.randn_like(p) * 0.1)
    names = changed_parameters(model, recipe.stages)
    save_weights(model, names, tmp_path / "model.safetensors")
    save_pruning(record, tmp_path / "pruning.safetensors")
    expected = logits(model, proc, samples[:4])

    _, fresh, proc2 = tiny(color_data)
    assert load_pruning(fresh, tmp_path / "pruning.safetensors", expected=True)
    prepare_lora(fresh, recipe.lora_components(), recipe.lora)
    load_weights(fresh, tmp_path / "model.safetensors", expected=names)
    assert torch.equal(logits(fresh, proc2, samples[:4]), expected)
    # A damaged record is refused, not half-applied.
    save_pruning(
        {k: v[:-1] if i else v for i, (k, v) in enumerate(record.items())}, tmp_path / "bad.safetensors"
    )
    with pytest.raises(OmnifuseError, match="one length"):
        load_pruning(tiny(color_data)[1], tmp_path / "bad.safetensors", expected=True)


def test_lora_on_the_mlp_is_refused(color_data):
    recipe, model, proc = tiny(color_data)
    raw = tiny_recipe_dict(color_data)
    raw["lora"]["target_modules"] = ["q_proj", "gate_proj"]
    prepare_lora(model, ["llm"], parse_recipe(raw).lora)
    with pytest.raises(OmnifuseError, match="LoRA adapters"):
        mlp_blocks(model)


def test_a_stage_that_prunes_trains_reloads_and_answers(color_data, tmp_path):
    raw = tiny_recipe_dict(color_data)
    raw["stages"][1]["prune"] = {"mlp_keep": 0.5, "calibration": 8}
    recipe = parse_recipe(raw)
    train(recipe, tmp_path / "run", progress=False, parts=make_parts())
    run = RunDir(tmp_path / "run")
    assert run.pruning_file.is_file()
    _, model, proc = load_model(run, progress=False, parts=make_parts())
    assert model.llm.config.intermediate_size == 32
    assert all(layer.mlp.down_proj.in_features == 32 for layer in model.llm.model.layers)
    answers = Engine(model, proc).generate(load_jsonl(color_data)[:2], GenerationConfig(3))
    assert len(answers) == 2
    # Exported with LoRA merged, the pruned LLM is a standard one that plain transformers loads.
    folder = export_run(run.path, tmp_path / "llm", fmt="llm", parts=make_parts(), progress=False)
    exported = LlamaForCausalLM.from_pretrained(folder).eval()
    assert exported.config.intermediate_size == 32
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        unload_lora(model.llm, merge=True)
        torch.testing.assert_close(exported(input_ids=ids).logits, model.llm(input_ids=ids).logits)
    run.pruning_file.unlink()  # the record is part of the run: without it the run does not load
    with pytest.raises(OmnifuseError, match="pruning.safetensors is missing"):
        load_model(run, progress=False, parts=make_parts())


def test_one_stage_prunes_at_most(color_data):
    raw = tiny_recipe_dict(color_data)
    for stage in raw["stages"]:
        stage["prune"] = {"mlp_keep": 0.5}
    with pytest.raises(OmnifuseError, match="one stage may prune"):
        parse_recipe(raw)
