"""Evaluate a run directory on a data set and write eval.json + report.md into it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from omnifuse.data.sample import select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.report import write_report
from omnifuse.eval.vqa import VQAResult, evaluate_vqa
from omnifuse.rundir import RunDir, load_model
from omnifuse.serve.engine import Engine, GenerationConfig
from omnifuse.training.checkpoint import atomic_write_text


@dataclass
class EvalOutcome:
    result: VQAResult
    blind: VQAResult | None
    seconds: float
    blind_seconds: float | None
    data: str

    def summary(self) -> dict:
        out = {"data": self.data, **self.result.summary(), "seconds": round(self.seconds, 1)}
        if self.blind is not None:
            out["blind"] = {**self.blind.summary(), "seconds": round(self.blind_seconds or 0.0, 1)}
        return out


def evaluate_run(
    run: RunDir,
    data: str | None = None,
    limit: int | None = None,
    blind: bool | None = None,
    progress: bool = True,
    loaded=None,
) -> EvalOutcome:
    """``data`` defaults to the recipe's eval data, ``limit`` to its eval_limit (seeded subset)."""
    recipe, model, processor = loaded or load_model(run, progress=progress)
    ref = data or recipe.data.eval
    limit = limit if limit is not None else (recipe.data.eval_limit if data is None else None)
    samples = select_subset(load_data(ref), limit, recipe.data.eval_seed)
    if not samples:
        raise OmnifuseError(f"{ref} holds no samples to evaluate")
    engine = Engine(model, processor)
    g = recipe.generation
    cfg = GenerationConfig(g.max_new_tokens, g.temperature, g.top_p, seed=recipe.seed)
    t0 = time.perf_counter()
    result = evaluate_vqa(engine, samples, cfg, recipe.eval.batch_size, progress=progress, label="eval")
    seconds = time.perf_counter() - t0
    blind_result, blind_seconds = None, None
    if blind if blind is not None else recipe.eval.blind:
        t0 = time.perf_counter()
        blind_result = evaluate_vqa(
            engine, samples, cfg, recipe.eval.batch_size, blind=True, progress=progress, label="eval blind"
        )
        blind_seconds = time.perf_counter() - t0
    outcome = EvalOutcome(result, blind_result, seconds, blind_seconds, ref)
    atomic_write_text(run.path / "eval.json", json.dumps(outcome.summary(), indent=2))
    atomic_write_text(
        run.path / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in result.predictions)
    )
    timings = {"evaluation": seconds} | ({"blind evaluation": blind_seconds} if blind_seconds else {})
    write_report(run, result, blind_result, samples, timings, ref)
    return outcome
