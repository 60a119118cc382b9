"""Evaluate a run directory on a data set and write eval.json, eval_manifest.json and report.md into it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from omnifuse.atomic import atomic_write_text
from omnifuse.data.sample import select_subset
from omnifuse.data.sources import load_data, resolve_data_path
from omnifuse.errors import OmnifuseError
from omnifuse.eval.importance import ImportanceSettings, generate_importance
from omnifuse.eval.manifest import (
    MANIFEST,
    EvalSettings,
    build_manifest,
    check_inputs,
    read_manifest,
    settings_from,
    version_drift,
)
from omnifuse.eval.probes import ProbeRow, run_probes
from omnifuse.eval.qformer_captions import stage_captions
from omnifuse.eval.report import write_report
from omnifuse.eval.vqa import VQAResult, evaluate_vqa
from omnifuse.generation.engine import Engine, generation_config, pack_weights, token_pruning
from omnifuse.recipe import FastVSpec, Recipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import current_world, placement_of, threads

ROBUSTNESS = "robustness.json"


@dataclass
class Reproduction:
    """A re-run from a manifest: the scores then and now, and library versions that changed."""

    manifest: Path
    then: dict
    now: dict
    drift: dict[str, tuple[str, str]]

    @property
    def same(self) -> bool:
        return self.then == self.now


@dataclass
class EvalOutcome:
    result: VQAResult
    blind: VQAResult | None
    seconds: float
    blind_seconds: float | None
    data: str
    probes: list[ProbeRow] | None = None
    reproduction: Reproduction | None = None
    captions: dict | None = None  # a qformer stage's held-out captions, by stage (eval.qformer_captions)
    importance: dict | None = None  # eval --importance: omnifuse.eval.importance's summary
    fastv: dict | None = None  # the FastV token pruning the answers were generated with (None: off)

    def scores(self) -> dict:
        out = {"accuracy": self.result.accuracy, "n": self.result.n}
        if self.blind is not None:
            out["blind_accuracy"] = self.blind.accuracy
        return out

    def summary(self) -> dict:
        out = {"data": self.data, **self.result.summary(), "seconds": round(self.seconds, 1)}
        if self.blind is not None:
            out["blind"] = {**self.blind.summary(), "seconds": round(self.blind_seconds or 0.0, 1)}
        if self.probes is not None:
            out["robustness"] = [row.summary() for row in self.probes]
        if self.captions is not None:
            out["captions"] = self.captions
        if self.importance is not None:
            out["importance"] = self.importance
        if self.fastv is not None:
            out["fastv"] = self.fastv
        return out


def recipe_settings(
    recipe: Recipe, data: str | None = None, limit: int | None = None, blind: bool | None = None
) -> EvalSettings:
    """``data`` defaults to the recipe's eval data, ``limit`` to its eval_limit (seeded subset)."""
    return EvalSettings(
        data=data or recipe.data.eval,
        limit=limit if limit is not None else (recipe.data.eval_limit if data is None else None),
        seed=recipe.data.eval_seed,
        generation=generation_config(recipe),
        batch_size=recipe.eval.batch_size,
        blind=blind if blind is not None else recipe.eval.blind,
        quantize=recipe.runtime.quantize,
        fastv=None if recipe.generation.fastv is None else recipe.generation.fastv.model_dump(),
    )


def evaluate_run(
    run: RunDir,
    data: str | None = None,
    limit: int | None = None,
    blind: bool | None = None,
    progress: bool = True,
    loaded=None,
    manifest: Path | None = None,
    robustness: bool = False,
    importance: ImportanceSettings | None = None,
    fastv: FastVSpec | None = None,
    packed_weights: str | None = None,
) -> EvalOutcome:
    """Evaluate with the recipe's settings (overridden by ``data``/``limit``/``blind``), or with exactly
    the settings of an earlier evaluation's ``manifest`` (refused when weights or data changed). ``importance``:
    also each modality's importance on the same samples (:mod:`omnifuse.eval.importance`). ``fastv``: prune
    image tokens at inference as this says instead of the recipe's ``generation.fastv``; ``packed_weights``
    (auto | off): instead of its ``generation.packed_weights``."""
    saved = read_manifest(manifest) if manifest is not None else None  # before the model loads
    if loaded is None:  # eval sits below the tasks, which load runs (omnifuse.tasks.load_language_model)
        raise TypeError("pass loaded=(recipe, model, processor) of the run")
    recipe, model, processor = loaded
    if fastv is not None:
        recipe = recipe.with_fastv(fastv)
    recipe = recipe.with_packed_weights(packed_weights)
    if saved is not None and (
        data is not None or limit is not None or blind is not None or fastv is not None
    ):
        raise OmnifuseError(
            "--manifest fixes the data, subset and settings: drop --data, --limit, --blind and --fastv-*"
        )
    if saved is not None:
        settings = settings_from(saved)
        recipe = _as_in_manifest(recipe, settings)
    else:
        settings = recipe_settings(recipe, data, limit, blind)
    data_file = resolve_data_path(settings.data)
    samples = select_subset(load_data(settings.data), settings.limit, settings.seed)
    if not samples:
        raise OmnifuseError(f"{settings.data} holds no samples to evaluate")
    if saved is not None:
        check_inputs(saved, data_file, samples, run.weights_file)
    # A long evaluation follows the load: torch's threads track the cores other processes leave free.
    with threads.kept_threads(placement_of(model).device, recipe.runtime.threads):
        engine = Engine(model, processor, token_pruning(recipe), pack_weights(recipe))
        cfg, bs = settings.generation, settings.batch_size
        t0 = time.perf_counter()
        result = evaluate_vqa(engine, samples, cfg, bs, progress=progress, label="eval")
        seconds = time.perf_counter() - t0
        blind_result, blind_seconds = None, None
        if settings.blind:
            t0 = time.perf_counter()
            blind_result = evaluate_vqa(
                engine, samples, cfg, bs, blind=True, progress=progress, label="eval blind"
            )
            blind_seconds = time.perf_counter() - t0
        probes = (
            run_probes(engine, samples, result, cfg, bs, settings.seed, progress=progress)
            if robustness
            else None
        )
        outcome = EvalOutcome(result, blind_result, seconds, blind_seconds, settings.data, probes)
        if recipe.generation.fastv is not None:
            outcome.fastv = recipe.generation.fastv.model_dump()
        if importance is not None:
            outcome.importance = generate_importance(
                engine, samples, result, cfg, bs, importance, blind_result, progress=progress
            )
    if saved is not None:
        now = {k: outcome.scores()[k] for k in saved.get("scores", {}) if k in outcome.scores()}
        outcome.reproduction = Reproduction(
            Path(manifest), saved.get("scores", {}), now, version_drift(saved)
        )
    if not current_world().main:  # sharded evaluation: every process holds all predictions, one writes
        return outcome
    outcome.captions = stage_captions(recipe, model, processor, bs, progress=progress)
    _write_files(run, outcome, settings, samples, data_file, processor)
    return outcome


def _as_in_manifest(recipe: Recipe, settings: EvalSettings) -> Recipe:
    """The recipe with the manifest's FastV settings; refused when the model loaded with another
    quantisation than the one evaluated (it is chosen as the model loads, before this)."""
    if settings.quantize is None:  # a manifest from before the inference settings were recorded
        return recipe
    if settings.quantize != recipe.runtime.quantize:
        raise OmnifuseError(
            f"the manifest's evaluation ran with the LLM quantised as {settings.quantize}, this model loaded "
            f"as {recipe.runtime.quantize}: pass --quantize {settings.quantize} to reproduce it"
        )
    return recipe.with_fastv(None if settings.fastv is None else FastVSpec(**settings.fastv))


def _write_files(
    run: RunDir, outcome: EvalOutcome, settings: EvalSettings, samples: list, data_file: Path, processor
) -> None:
    """eval.json, predictions.jsonl, the manifest, robustness.json (with probes) and report.md."""
    atomic_write_text(run.path / "eval.json", json.dumps(outcome.summary(), indent=2))
    atomic_write_text(
        run.path / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in outcome.result.predictions)
    )
    record = build_manifest(settings, data_file, samples, processor, run.weights_file, outcome.scores())
    atomic_write_text(run.path / MANIFEST, json.dumps(record, indent=2))
    if outcome.probes is not None:
        atomic_write_text(
            run.path / ROBUSTNESS, json.dumps([row.summary() for row in outcome.probes], indent=2)
        )
    o = outcome
    timings = {"evaluation": o.seconds} | ({"blind evaluation": o.blind_seconds} if o.blind_seconds else {})
    write_report(run, o.result, o.blind, samples, timings, o.data, o.probes, o.captions, o.importance)
