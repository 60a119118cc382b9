"""The model a training run trains: built from the recipe's pretrained parts and made ready for its stages
(the trainer's loop is in :mod:`omnifuse.training.loop`)."""

from __future__ import annotations

from omnifuse.models.builders import build_model
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.models.quantize import prepare_kbit_training
from omnifuse.models.stages import changed_parameters, prepare_lora
from omnifuse.processing import Processor
from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement, World, configure_model, load_dtype, place
from omnifuse.training import parallel
from omnifuse.training.pruning import resume_pruning


def training_model(
    recipe: Recipe,
    run: RunDir,
    placement: Placement,
    world: World,
    quant,
    parts: dict | None,
    progress: bool,
    resume: bool,
) -> tuple[MultimodalLM, Processor]:
    """The recipe's model and processor: a frozen LLM loaded in the compute dtype (float32 where a stage
    trains it whole or FSDP shards it), or in 4 / 8 bits for QLoRA (``quant``); a pruned stage's shapes
    rebuilt on a resume before LoRA and the checkpoint; LoRA added, the model placed and configured, and
    sharded under FSDP. ``parts`` may inject tiny random parts (tests)."""
    fsdp = recipe.runtime.distributed.strategy == "fsdp"
    whole = fsdp or any(s.trainable.get("llm") == "full" for s in recipe.stages)
    parts = {"llm_dtype": load_dtype(placement, float32_storage=whole), **(parts or {})}
    model, processor = build_model(
        recipe.model, progress=progress and world.main, llm_kwargs=quant.llm_kwargs, **parts
    )
    if quant.bitsandbytes:  # the LLM frozen in 4 / 8 bits, LoRA trained on top
        prepare_kbit_training(model, "llm" in recipe.runtime.gradient_checkpointing)
    if resume:  # a stage that pruned rebuilds its shapes before LoRA and the checkpoint load
        resume_pruning(model, run)
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    # FSDP keeps one storage dtype per unit (float32) and computes in its mixed-precision policy.
    trained = [n for n, _ in model.named_parameters()] if fsdp else changed_parameters(model, recipe.stages)
    place(model, processor, placement, trained=trained)
    configure_model(model, recipe.runtime)
    if fsdp:
        parallel.shard(model, placement, world)
    return model, processor


__all__ = ["training_model"]
