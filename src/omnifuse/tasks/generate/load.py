"""A trained multimodal LLM rebuilt from its run directory: base assets + the saved changed parameters,
placed on the device and in the precision the recipe's ``runtime`` section (or ``--device`` /
``--dtype``) asks for."""

from __future__ import annotations

from omnifuse.models.builders import build_model
from omnifuse.models.prune import load_pruning
from omnifuse.models.stages import changed_parameters, prepare_lora
from omnifuse.models.weights import load_weights
from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import current_world, load_dtype, place, resolve_placement


def load_model(
    run: RunDir,
    progress: bool = True,
    parts: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
):
    """``(recipe, model, processor)`` of a trained generate run, in eval mode, on its placement: the
    processor's batches land on the model's device; with a low-precision ``dtype`` every floating
    parameter is stored in it (inference trains nothing) and forward passes run under its autocast.
    Other kinds of run are refused before this, by their task (:func:`omnifuse.tasks.load_language_model`).

    ``parts`` may inject ``llm``/``tokenizer``/``encoders`` instead of loading the base assets;
    ``device`` / ``dtype`` override ``runtime.device`` / ``runtime.dtype``, checked before anything loads."""
    run.require_trained()
    recipe: Recipe = run.recipe()
    # Under a launcher (sharded eval) each process takes the GPU of its local rank.
    local_rank = current_world().local_rank
    placement = resolve_placement(recipe.runtime, device=device, dtype=dtype, local_rank=local_rank)
    parts = {"llm_dtype": load_dtype(placement), **(parts or {})}
    model, processor = build_model(recipe.model, progress=progress, **parts)
    load_pruning(model, run.pruning_file, expected=any(s.prune is not None for s in recipe.stages))
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    load_weights(model, run.weights_file, expected=changed_parameters(model, recipe.stages))
    place(model, processor, placement)
    model.eval()
    return recipe, model, processor
