"""One sweep run of a multimodal LLM recipe: trained, evaluated (VQA exact match) and timed."""

from __future__ import annotations

import math
import statistics
import time

from safetensors import safe_open

from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.eval.runner import evaluate_run
from omnifuse.generation.engine import (
    Engine,
    GenerationConfig,
    generation_config,
    pack_weights,
    token_pruning,
)
from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.base import SweepRun
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train


def saved_parameters(run: RunDir) -> int:
    """Parameters training changed (what model.safetensors holds: connectors, LoRA, fusion, ...)."""
    with safe_open(str(run.weights_file), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def latency(engine: Engine, samples, cfg: GenerationConfig) -> float:
    """Median seconds to answer one sample alone (batch 1, greedy), after one warm-up."""
    prompts = [Sample(s.id, s.prompt(), s.meta) for s in samples]
    engine.generate(prompts[:1], cfg)
    times = []
    for p in prompts:
        t0 = time.perf_counter()
        engine.generate([p], cfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sweep_run(recipe: Recipe, job: SweepRun) -> dict:
    run, factory = job.run, job.parts_factory
    trained = train(
        recipe, run.path, resume=job.resume, console=job.console, progress=job.progress,
        parts=factory() if factory else None,
    )  # fmt: skip
    loaded = load_model(run, progress=job.progress, parts=factory() if factory else None)
    _, model, processor = loaded
    outcome = evaluate_run(run, blind=False, progress=job.progress, loaded=loaded)
    result = outcome.result
    timed = select_subset(load_data(recipe.data.eval), job.latency_samples, recipe.data.eval_seed)
    seconds = latency(
        Engine(model, processor, token_pruning(recipe), pack_weights(recipe)),
        timed,
        generation_config(recipe, greedy=True),
    )
    return {
        "accuracy": result.accuracy,
        "n_eval": result.n,
        "per_type": {t: v["accuracy"] for t, v in result.per_type.items()},
        "trainable_params": saved_parameters(run),
        "image_tokens": {m: model.media_tokens_per_item(m) for m in recipe.model.encoders},
        "text_tokens_per_image": {m: model.tokens_per_item(m) for m in recipe.model.encoders},
        "wall_seconds_last_attempt": round(trained.seconds, 2),
        "eval_seconds": round(outcome.seconds, 2),
        "latency_s": round(seconds, 4),
    }
