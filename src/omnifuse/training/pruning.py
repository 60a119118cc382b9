"""A stage that prunes (``stages.*.prune``): before it trains, the LLM's MLP channels are ranked on a
seeded subset of the stage's samples and cut (:mod:`omnifuse.models.prune`); the stage itself then trains
the pruned model back (the recovery). The kept channels go to ``RUN/pruning.safetensors`` at once, so a
resumed run rebuilds the same shapes before its checkpoint loads."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from omnifuse.data.sample import Sample, select_subset
from omnifuse.models.prune import (
    channel_scores,
    kept_channels,
    load_pruning,
    mlp_parameters,
    prune_mlp,
    save_pruning,
)
from omnifuse.processing import Processor
from omnifuse.recipe import StageSpec
from omnifuse.rundir import RunDir


def prune_before_stage(
    model, processor: Processor, stage: StageSpec, samples: Sequence[Sample], seed: int, run: RunDir,
    console: Console, main: bool,
) -> None:  # fmt: skip
    """Prune the model as ``stage.prune`` says, unless this run already did (a resumed run was pruned
    from its record as it was built, :func:`resume_pruning`)."""
    spec = stage.prune
    if spec is None or run.pruning_file.is_file():
        return
    calibration = select_subset(list(samples), spec.calibration, seed)
    before = mlp_parameters(model)
    scores = channel_scores(model, processor, calibration, stage.batch_size)
    record = prune_mlp(model, kept_channels(scores, spec.mlp_keep))
    if main:
        save_pruning(record, run.pruning_file)
    kept, size = len(next(iter(record.values()))), len(scores[0])
    console.print(
        f"stage {stage.name}: pruned the LLM's MLPs to {kept} of {size} channels per layer "
        f"({before:,} → {before * kept // size:,} MLP parameters), ranked on {len(calibration)} samples"
    )


def resume_pruning(model, run: RunDir) -> None:
    """A resumed run whose pruning stage has begun: the same shapes again, before LoRA and the checkpoint."""
    load_pruning(model, run.pruning_file, expected=False)
