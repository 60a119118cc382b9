"""A trained multimodal LLM rebuilt from its run directory: base assets + the saved changed parameters."""

from __future__ import annotations

from omnifuse.models.builders import build_model
from omnifuse.models.stages import changed_parameters, prepare_lora
from omnifuse.models.weights import load_weights
from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir


def load_model(run: RunDir, progress: bool = True, parts: dict | None = None):
    """``(recipe, model, processor)`` of a trained generate run, in eval mode. Other kinds of run are
    refused before this, by their task (:func:`omnifuse.tasks.load_language_model`).

    ``parts`` may inject ``llm``/``tokenizer``/``encoders`` instead of loading the base assets."""
    run.require_trained()
    recipe: Recipe = run.recipe()
    model, processor = build_model(recipe.model, progress=progress, **(parts or {}))
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    load_weights(model, run.weights_file, expected=changed_parameters(model, recipe.stages))
    model.eval()
    return recipe, model, processor
