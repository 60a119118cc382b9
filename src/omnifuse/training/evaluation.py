"""Evaluation while a recipe trains: ``eval.every`` (the seeded eval subset's accuracy every N steps, in
metrics.jsonl) and ``eval.after_stage`` (each task's own metric at the end of a stage, one row of
RUN/stage_eval.jsonl, see :mod:`omnifuse.eval.stage_eval`).

The model being trained answers (no second copy), in eval mode, and is put back into training mode
afterwards. Greedy decoding draws no random numbers, so the data order and a resumed run are unchanged
by it.
"""

from __future__ import annotations

import time
from pathlib import Path

from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.eval.stage_eval import stage_row, stage_samples, write_stage_row
from omnifuse.eval.vqa import VQAResult, evaluate_vqa
from omnifuse.generation.engine import Engine, generation_config, pack_weights, token_pruning
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.recipe import Recipe, StageSpec


class TrainingEvaluation:
    """The evaluations one training run makes, with the samples they answer (loaded once, on first use)."""

    def __init__(self, recipe: Recipe, model: MultimodalLM, processor: Processor, run_path: Path) -> None:
        self.recipe, self.model, self.processor, self.run_path = recipe, model, processor, run_path
        self._eval_samples: list[Sample] | None = None
        self._last_eval: tuple[list[Sample], VQAResult] | None = None  # evaluate's last (for stage rows)
        self._stage_samples: list[Sample] | None = None  # eval.stage_data's ([]: the eval.every subset)

    def evaluate(self, samples: list[Sample] | None = None) -> dict[str, float]:
        """Score the model being trained on ``samples``, by default the seeded eval subset
        ``eval.during_limit``; the training mode is restored afterwards."""
        recipe = self.recipe
        if samples is None and self._eval_samples is None:
            self._eval_samples = select_subset(
                load_data(recipe.data.eval), recipe.eval.during_limit, recipe.data.eval_seed
            )
        samples = self._eval_samples if samples is None else samples
        cfg = generation_config(recipe)
        t0 = time.perf_counter()
        self.model.eval()
        try:
            result = evaluate_vqa(
                Engine(self.model, self.processor, token_pruning(recipe), pack_weights(recipe)),
                samples,
                cfg,
                recipe.eval.batch_size,
                progress=False,
            )
        finally:
            self.model.train()
            self.model.encoders.eval()
        self._last_eval = (samples, result)
        return {
            "eval_accuracy": round(result.accuracy, 6),
            "eval_n": result.n,
            "eval_seconds": round(time.perf_counter() - t0, 3),
        }

    def after_step(self, si: int, stage: StageSpec, step: int, steps: int, record: dict, bar) -> None:
        """After optimizer step ``step`` of ``steps`` (main process only; the others wait at the next
        step's gradient exchange): eval.every's scores added to ``record``, and at the stage's last step
        its eval.after_stage row. A Q-Former stage generates no text and is not evaluated."""
        if stage.objective.type == "qformer":
            return
        every = self.recipe.eval.every
        if every and (step % every == 0 or step == steps):
            record |= self.evaluate()
            bar.log(
                f"{stage.name} step {step}/{steps}: eval accuracy {100 * record['eval_accuracy']:.1f} % "
                f"on {record['eval_n']} samples ({record['eval_seconds']:.1f} s)"
            )
        if step == steps and self.recipe.evaluates_stages():
            self._evaluate_stage(si, stage.name, step, record, bar)

    def _evaluate_stage(self, si: int, name: str, step: int, record: dict, bar) -> None:
        """eval.after_stage: each task's own metric on eval.stage_data (else the eval.every subset, whose
        evaluation at this step, if any, is reused), one row of RUN/stage_eval.jsonl."""
        if self._stage_samples is None:
            self._stage_samples = stage_samples(self.recipe)
        scores = record if "eval_accuracy" in record and not self._stage_samples else None
        scores = scores or self.evaluate(self._stage_samples or None)
        samples, result = self._last_eval
        seconds = scores["eval_seconds"]
        write_stage_row(self.run_path, stage_row(name, si, step, samples, result, seconds))
        bar.log(f"{name}: per-task metrics on {result.n} samples ({seconds:.1f} s) in stage_eval.jsonl")


__all__ = ["TrainingEvaluation"]
