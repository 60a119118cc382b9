"""A trained multimodal LLM rebuilt from its run directory: base assets + the saved changed parameters,
placed on the device and in the precision the recipe's ``runtime`` section (or ``--device`` /
``--dtype``) asks for."""

from __future__ import annotations

from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_model
from omnifuse.models.prune import load_pruning
from omnifuse.models.quantize import QuantizePlan, plan_quantize, quantize_dynamic_int8
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
    quantize: str | None = None,
):
    """``(recipe, model, processor)`` of a trained generate run, in eval mode, on its placement: the
    processor's batches land on the model's device; with a low-precision ``dtype`` every floating
    parameter is stored in it (inference trains nothing) and forward passes run under its autocast.
    Other kinds of run are refused before this, by their task (:func:`omnifuse.tasks.load_language_model`).

    ``parts`` may inject ``llm``/``tokenizer``/``encoders`` instead of loading the base assets;
    ``device`` / ``dtype`` / ``quantize`` override ``runtime.device`` / ``runtime.dtype`` /
    ``runtime.quantize``, checked before anything loads. The recipe returned carries the quantisation in
    use (its ``runtime.quantize``)."""
    run.require_trained()
    recipe: Recipe = run.recipe()
    # Under a launcher (sharded eval) each process takes the GPU of its local rank.
    local_rank = current_world().local_rank
    placement = resolve_placement(
        recipe.runtime, device=device, dtype=dtype, local_rank=local_rank, inference=True
    )
    where = "--quantize" if quantize else "runtime.quantize"
    plan = plan_quantize(quantize or recipe.runtime.quantize, placement, where)
    _check_bitsandbytes(plan, recipe, where)
    parts = {"llm_dtype": load_dtype(placement), "llm_kwargs": plan.llm_kwargs, **(parts or {})}
    model, processor = build_model(recipe.model, progress=progress, **parts)
    load_pruning(model, run.pruning_file, expected=any(s.prune is not None for s in recipe.stages))
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    load_weights(model, run.weights_file, expected=changed_parameters(model, recipe.stages))
    place(model, processor, placement)
    if plan.dynamic:
        quantize_dynamic_int8(model)
    model.eval()
    if plan.mode != recipe.runtime.quantize:
        runtime = recipe.runtime.model_copy(update={"quantize": plan.mode})
        recipe = recipe.model_copy(update={"runtime": runtime})
    return recipe, model, processor


def _check_bitsandbytes(plan: QuantizePlan, recipe: Recipe, where: str) -> None:
    """bitsandbytes quantises the base LLM as it loads; a run whose stages changed the LLM's own weights
    (trained fully) or that starts from a LLaVA checkpoint's LLM has other weights to quantise."""
    if not plan.bitsandbytes:
        return
    full = [s.name for s in recipe.stages if s.trainable.get("llm") == "full"]
    pruned = [s.name for s in recipe.stages if s.prune is not None]
    if full or pruned or recipe.model.init_from is not None:
        why = (
            f"stage {full[0]!r} trained the LLM fully" if full
            else f"stage {pruned[0]!r} pruned its MLP" if pruned
            else "its LLM comes from model.init_from"
        )  # fmt: skip
        raise OmnifuseError(
            f"{where} {plan.mode}: bitsandbytes quantises the base LLM as it loads, but {why}, so its weights "
            "are not the base asset's; use this run unquantised (drop --quantize), or on a CPU with int8"
        )
