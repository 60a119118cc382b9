"""Training-step time of each recipe's stages on the real packaged parts, and the training time it implies.

Builds each recipe's model (real MobileNetV2 / EfficientNet-Lite0 / SmolLM2), applies each stage and
times forward + backward + AdamW on easy-vqa batches of the stage's batch size (1 warm-up step, then
the mean of ``--steps``); the estimate is Σ stage steps × time per step. Used to give the recipes
about the quickstart's training budget (docs/experiments.md): compare the recipes with the quickstart
measured in the same run, not across machines or loads.

    .venv/bin/python benchmarks/bench_recipe_steps.py [--steps 2] quickstart llava flamingo ...
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_step import time_steps  # the same timing loop (this folder is on sys.path when run)

from omnifuse.data.sources import load_data
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage, prepare_lora
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR

RECIPES = RECIPES_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("recipes", nargs="+", help="recipe names in src/omnifuse/recipes/ (without .yaml)")
    args = ap.parse_args()
    samples = load_data("easy-vqa:train")
    for name in args.recipes:
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        torch.manual_seed(0)
        model, proc = build_model(recipe.model, progress=False)
        prepare_lora(model, recipe.lora_components(), recipe.lora)
        total, parts, lengths = 0.0, [], []
        for stage in recipe.stages:
            opt = torch.optim.AdamW(apply_stage(model, stage, recipe.lora))
            times, stage_lengths = time_steps(model, proc, opt, samples, stage.batch_size, args.steps)
            lengths += stage_lengths
            per_step = statistics.mean(times)
            total += per_step * stage.steps
            parts.append(f"{stage.name} {per_step:.2f} s × {stage.steps}")
        print(
            f"{name:<12} image tokens in text {model.tokens_per_item('image'):>2} per view, "
            f"{statistics.mean(lengths):.1f} tokens/sample  {', '.join(parts)}  → {total:.0f} s"
        )


if __name__ == "__main__":
    main()
