"""The run directory: the unit users keep.

::

    RUN/recipe.yaml          the fully resolved recipe (defaults filled in)
    RUN/run.json             base assets it builds on, omnifuse version, which parameters changed
    RUN/model.safetensors    the changed parameters only (connectors, LoRA, anything trained fully)
    RUN/checkpoint/          last training checkpoint (weights, optimizer, RNG, progress) for --resume
    RUN/metrics.jsonl        one line per optimizer step
    RUN/eval.json            last evaluation; RUN/report.md with plots
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import Recipe, parse_recipe


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def meta_file(self) -> Path:
        return self.path / "run.json"

    @property
    def weights_file(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def exists(self) -> bool:
        return self.recipe_file.is_file()

    def require_trained(self) -> RunDir:
        if not self.path.is_dir():
            raise OmnifuseError(
                f"run directory {self.path} does not exist; train one with `omnifuse train RECIPE --out {self.path}`"
            )
        if not self.recipe_file.is_file():
            raise OmnifuseError(f"{self.path} is not an omnifuse run directory (no recipe.yaml in it)")
        if not self.weights_file.is_file():
            hint = " (training was interrupted: continue it with `omnifuse train RECIPE --out RUN --resume`)"
            raise OmnifuseError(
                f"{self.path} holds no trained weights yet{hint if self.checkpoint.exists() else ''}"
            )
        return self

    def recipe(self) -> Recipe:
        return parse_recipe(yaml.safe_load(self.recipe_file.read_text()), str(self.recipe_file))


def load_model(run: RunDir, progress: bool = True, parts: dict | None = None):
    """Rebuild a trained model from its run directory: base assets + the saved changed parameters.

    ``parts`` may inject ``llm``/``tokenizer``/``encoders`` instead of loading the base assets."""
    from omnifuse.models.builders import build_model
    from omnifuse.training.checkpoint import load_weights
    from omnifuse.training.stages import prepare_lora

    run.require_trained()
    recipe = run.recipe()
    if not isinstance(recipe, Recipe):
        raise OmnifuseError(
            f"{run.path} is a run of a {type(recipe).__name__} (task: {recipe.task}), which has no language model "
            "to load or chat with; its scores are in eval.json and report.md, written by `omnifuse train`"
        )
    model, processor = build_model(recipe.model, progress=progress, **(parts or {}))
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    load_weights(model, run.weights_file)
    model.eval()
    return recipe, model, processor
