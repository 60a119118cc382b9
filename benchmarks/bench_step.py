"""Training-step throughput of the quickstart model by image tokens and batch size.

Times forward + backward + AdamW of the real quickstart model (MobileNetV2 → pool connector →
SmolLM2-135M with LoRA, the `instruct` stage) on easy-vqa batches; prints samples/s per setting, with
the first setting as the reference for the ratio. Used to choose the quickstart plan
(docs/experiments.md).

    .venv/bin/python benchmarks/bench_step.py [--steps 5] [--settings 1x8 1x16 4x16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from omnifuse.data.sources import load_data
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR

QUICKSTART = RECIPES_DIR / "quickstart.yaml"


def time_steps(model, proc, opt, samples, batch: int, steps: int) -> tuple[list[float], list[float]]:
    """Seconds of each of ``steps`` training steps (forward + backward + optimizer, after one warm-up
    step) and the mean tokens per sample of each timed batch. Shared by bench_recipe_steps.py."""
    model.train()
    model.encoders.eval()
    times, lengths = [], []
    for i in range(steps + 1):  # the first step warms up
        b = proc.collate([proc.encode(s) for s in samples[i * batch : (i + 1) * batch]])
        t0 = time.perf_counter()
        model(**b.model_inputs()).loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
            lengths.append(b.attention_mask.sum().item() / len(b.sample_ids))
    return times, lengths


def measure(tokens: int, batch: int, steps: int, samples) -> tuple[float, float]:
    grid = int(tokens**0.5)
    recipe = load_recipe(QUICKSTART, [f"model.connectors.image.grid={grid}"])
    torch.manual_seed(0)
    model, proc = build_model(recipe.model, progress=False)
    groups = apply_stage(model, recipe.stages[-1], recipe.lora)
    times, lengths = time_steps(model, proc, torch.optim.AdamW(groups), samples, batch, steps)
    return statistics.median(times), statistics.mean(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--settings", nargs="+", default=["1x8", "1x16", "4x16"], help="IMAGE_TOKENSxBATCH")
    args = ap.parse_args()
    samples = load_data("easy-vqa:train")
    print(
        f"{'image tokens':>12} {'batch':>5} {'tokens/sample':>13} {'s/step':>7} {'samples/s':>9} {'ratio':>6}"
    )
    ref = None
    for setting in args.settings:
        tokens, batch = (int(x) for x in setting.split("x"))
        step, length = measure(tokens, batch, args.steps, samples)
        rate = batch / step
        ref = ref or rate
        print(f"{tokens:>12} {batch:>5} {length:>13.1f} {step:>7.2f} {rate:>9.2f} {rate / ref:>6.2f}")


if __name__ == "__main__":
    main()
