"""The frozen-feature cache (runtime.feature_cache) on the quickstart recipe's first stage, on this machine.

Builds the quickstart model (MobileNetV2 at 128 px → pooled MLP connector → SmolLM2-135M-Instruct, the packaged
weights), applies its stage 1 (connector trained, encoder and LLM frozen) and runs the stage's first ``--steps``
optimizer steps (its data order, batch 8; one step = processor encode + collate, forward, backward, AdamW), after
two untimed warm-up steps. Per batch, interleaved: a step that builds the cache (its new images encoded and
stored), a step with the cache off (the encoder runs), a step with it on (every image read back), and the
encoder's forward alone on the step's pixels (what the cache can save at most); medians over the batches and
the ratio off / on are printed, with the cache's size on disk. One torch thread (``--threads``), so that the ratio is
not the machine's other load.

    .venv/bin/python benchmarks/feature_cache.py --steps 20
    .venv/bin/python benchmarks/feature_cache.py --draws   # how many images the recipe's stages draw
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from omnifuse.data.sources import load_data
from omnifuse.models.builders import build_model
from omnifuse.models.feature_cache import attach_feature_cache
from omnifuse.models.stages import apply_stage
from omnifuse.recipe import load_recipe
from omnifuse.training.objectives import generative_step
from omnifuse.training.order import stage_order, stage_steps

RECIPE = Path(__file__).parents[1] / "src" / "omnifuse" / "recipes" / "quickstart.yaml"


def draws() -> None:
    """The distinct image items the recipe's stages draw (their data order), i.e. what the cache will hold."""
    recipe = load_recipe(RECIPE)
    samples = load_data(recipe.data.train)
    seen: set[str] = set()
    for si, stage in enumerate(recipe.stages):
        order, _ = stage_order(stage, si, recipe.seed, [samples], 1)
        n = stage_steps(stage, len(samples)) * stage.batch_size * stage.grad_accum
        images = {str(samples[order(i)].images()[0]) for i in range(n)}
        print(f"stage {stage.name}: {n} samples, {len(images)} distinct images, {len(images - seen)} new")
        seen |= images
    print(f"all stages: {len(seen)} distinct images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draws", action="store_true", help="only count the images every stage draws (no model)")
    args = ap.parse_args()
    if args.draws:
        return draws()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(RECIPE)
    stage = recipe.stages[0]
    torch.manual_seed(recipe.seed)
    model, processor = build_model(recipe.model, progress=False)
    groups = apply_stage(model, stage, recipe.lora)
    optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
    model.train()
    model.encoders.eval()
    samples = load_data(recipe.data.train)
    order, _ = stage_order(stage, 0, recipe.seed, [samples], 1)
    b = stage.batch_size
    batches = [[samples[order(i * b + j)] for j in range(b)] for i in range(args.steps)]

    def step(batch) -> float:
        t0 = time.perf_counter()
        out = generative_step(model, processor, batch, stage)
        (out.loss * out.weight).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def encoder_time(batch) -> float:  # the frozen encoder's forward alone: what the cache can save
        pixels = processor.collate([processor.encode(s) for s in batch]).media["image"]
        t0 = time.perf_counter()
        with torch.no_grad():
            model.encoders["image"](pixels)
        return time.perf_counter() - t0

    for batch in batches[:2]:  # warm-up (allocator, oneDNN primitives, page cache), not timed
        step(batch)
    with tempfile.TemporaryDirectory() as root:
        cache = attach_feature_cache(model, processor, "auto", Path(root), recipe.model.encoders)
        build, on, off, enc = [], [], [], []
        for batch in batches:  # per batch, interleaved: building (misses), off, on (hits), the encoder alone
            model.feature_cache, processor.content_keys = cache, True
            build.append(step(batch))
            model.feature_cache, processor.content_keys = None, False
            off.append(step(batch))
            model.feature_cache, processor.content_keys = cache, True
            on.append(step(batch))
            enc.append(encoder_time(batch))
        size, items, reused = cache.size_bytes(), cache.built, cache.reused
    m_build, m_on, m_off, m_enc = (statistics.median(x) for x in (build, on, off, enc))
    print(f"quickstart stage 1, {args.steps} steps of batch {b}, {args.threads} torch thread(s)")
    print(
        f"median step: cache off {m_off * 1000:.0f} ms, on {m_on * 1000:.0f} ms, building it {m_build * 1000:.0f} ms"
    )
    print(
        f"the encoder's forward alone: {m_enc * 1000:.0f} ms ({100 * m_enc / m_off:.1f} % of a step without the cache)"
    )
    print(
        f"speed-up with the cache built (off / on): {m_off / m_on:.3f}x; a building step: {m_build / m_off:.3f}x off"
    )
    print(
        f"cache: {items} images, {reused} reads, {size / 1e6:.1f} MB ({size / max(items, 1) / 1e3:.0f} kB per image)"
    )


if __name__ == "__main__":
    main()
