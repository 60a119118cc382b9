"""The trainer's side of ``runtime.feature_cache`` (omnifuse.models.feature_cache holds the cache itself):
attach it to the model being trained, and before each stage encode the images its steps will draw."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from omnifuse.data.sample import Sample
from omnifuse.models.feature_cache import FeatureCache, attach_feature_cache, build_cache
from omnifuse.recipe import Recipe, StageSpec
from omnifuse.rundir import RunDir


def attach(recipe: Recipe, run: RunDir, model, processor, processes: int, log: Callable[[str], None]):
    """The run's cache, ``<run>/feature_cache`` (None with ``runtime.feature_cache: off`` or several processes)."""
    return attach_feature_cache(
        model, processor, recipe.runtime.feature_cache, run.path / "feature_cache", recipe.model.encoders,
        processes, log,
    )  # fmt: skip


def before_stage(trainer, stage: StageSpec, samples: Sequence[Sample], order, step: int, steps: int) -> None:
    """The images the stage's remaining steps draw (this process's micro-batches, in the loop's order), through
    its frozen encoders once, under a progress bar; then the cache's size. Nothing without a cache, or under
    DP-SGD (whose Poisson sampling draws other samples)."""
    cache: FeatureCache | None = trainer.model.feature_cache
    if cache is None or trainer._private is not None:
        return
    n = stage.batch_size * trainer.micro_batches(stage)
    drawn = (samples[order(i)] for i in range(step * n, steps * n))
    with trainer.placement.autocast():
        built = build_cache(
            trainer.model, trainer.processor, drawn, (steps - step) * n, stage.name, trainer.progress,
            stage.batch_size,
        )  # fmt: skip
    if built:
        trainer.console.print(cache.describe())
