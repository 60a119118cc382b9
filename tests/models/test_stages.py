"""Stages as data: a stage trains exactly the parts it names (LoRA: only the adapters)."""

from __future__ import annotations

from omnifuse.data.jsonl import load_jsonl
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage, prepare_lora
from omnifuse.recipe import parse_recipe
from tiny import make_parts, tiny_recipe_dict


def test_stage_trains_only_what_it_names(color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    model, proc = build_model(recipe.model, **make_parts())
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    batch = proc.collate([proc.encode(s) for s in load_jsonl(color_data)[:4]])
    for stage, trained in zip(recipe.stages, [("connectors.",), ("connectors.", "lora_")], strict=True):
        apply_stage(model, stage, recipe.lora)
        model.zero_grad(set_to_none=True)
        model(**batch.model_inputs()).loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad, stage.name
        for name in with_grad:
            assert name.startswith("connectors.") or ("lora_" in name and "lora_" in trained), name
        if "lora_" in trained:
            assert any("lora_" in n for n in with_grad)
        assert not any(n.startswith("encoders.") for n in with_grad)
