"""``task: generate`` (the default): a multimodal LLM — encoders, connectors, fusion, a causal LM — trained
through its stages (:mod:`omnifuse.training.loop`), evaluated by exact-match VQA with a blind baseline
(:mod:`omnifuse.eval.runner`), reloaded by ``load.py`` for eval, chat, explain, report and serve."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.base import (
    EvalRequest,
    Evaluated,
    SweepColumn,
    SweepRun,
    TrainDone,
    importance_printout,
)


class GenerateTask:
    name = "generate"
    score_name = "accuracy"
    group_name = "question type"
    sweep_columns = (
        SweepColumn("train s", lambda r: f"{r['train_seconds']:.0f}"),
        SweepColumn("image tokens", lambda r: str(r["image_tokens"])),
        SweepColumn("latency ms", lambda r: f"{r['latency_ms']:.0f}"),
    )

    def describe(self, recipe: Recipe) -> str:
        stages = ", ".join(
            f"{s.name} ({s.steps or s.epochs} {'steps' if s.steps else 'epochs'})" for s in recipe.stages
        )
        return f"valid recipe {recipe.name!r}; stages: {stages}"

    def train(
        self, recipe: Recipe, out: Path, *, resume: bool, console: Console, progress: bool,
        tensorboard: bool = False,
    ) -> TrainDone:  # fmt: skip
        from omnifuse.progress import peak_rss_gb
        from omnifuse.training.loop import train

        res = train(recipe, out, resume=resume, console=console, progress=progress, tensorboard=tensorboard)
        if res.already_finished:
            return TrainDone(Path(out), True, [])
        line = (
            f"trained {recipe.name} in {res.seconds:.1f} s ({res.steps} steps, final loss "
            f"{res.final_loss or float('nan'):.4f}); run directory: {out}  peak memory {peak_rss_gb():.2f} GB"
        )
        return TrainDone(Path(out), False, [line], res.seconds)

    def evaluate(self, run: RunDir, request: EvalRequest) -> Evaluated:
        from omnifuse.eval.manifest import read_manifest
        from omnifuse.eval.runner import evaluate_run
        from omnifuse.tasks.generate.load import load_model
        from omnifuse.tasks.generate.printout import eval_printout

        if request.manifest is not None:
            read_manifest(request.manifest)  # a bad manifest fails before the model loads
        outcome = evaluate_run(
            run,
            request.data,
            request.limit,
            request.blind,
            progress=request.progress,
            loaded=load_model(
                run,
                progress=request.progress,
                device=request.device,
                dtype=request.dtype,
                quantize=request.quantize,
            ),
            manifest=request.manifest,
            robustness=request.robustness,
            importance=request.importance,
            fastv=request.fastv,
            packed_weights=request.packed_weights,
        )
        printout = eval_printout(outcome, run.path)
        return Evaluated(
            outcome.summary(), printout[:-1] + importance_printout(outcome.importance) + printout[-1:]
        )

    def report(
        self, run: RunDir, samples: int, explained: int, progress: bool,
        device: str | None = None, dtype: str | None = None,
    ) -> Path:  # fmt: skip
        """RUN/report.html: scores, stages, curves, samples with heatmaps (the model loads once the run
        files are checked)."""
        from omnifuse.eval.html import write_html_report
        from omnifuse.tasks.generate.load import load_model

        return write_html_report(
            run,
            # its heatmaps take gradients, which quantised layers do not have: the float model
            loaded=lambda: load_model(run, progress=progress, device=device, dtype=dtype, quantize="none"),
            samples=samples,
            explained=explained,
            progress=progress,
        )

    def load_language_model(
        self, run: RunDir, progress: bool = True, parts: dict | None = None,
        device: str | None = None, dtype: str | None = None, quantize: str | None = None,
    ):  # fmt: skip
        from omnifuse.tasks.generate.load import load_model

        return load_model(run, progress=progress, parts=parts, device=device, dtype=dtype, quantize=quantize)

    def training_samples(self, recipe: Recipe) -> int:
        """Steps × batch size × accumulation, summed over stages."""
        from omnifuse.data.sources import load_data
        from omnifuse.training.order import stage_refs, stage_steps

        sizes: dict[str, int] = {}
        total = 0
        for stage in recipe.stages:
            n = 0
            if stage.steps is None:
                refs = stage_refs(stage, recipe.data.train)
                for ref in refs:
                    if ref not in sizes:
                        sizes[ref] = len(load_data(ref))
                n = sum(min(sizes[ref], stage.limit or sizes[ref]) for ref in refs)
            total += stage_steps(stage, n) * stage.batch_size * stage.grad_accum
        return total

    def plan(self, recipe: Recipe) -> str:
        return " → ".join(s.name for s in recipe.stages)

    def sweep_run(self, recipe: Recipe, job: SweepRun) -> dict:
        """Train, evaluate (VQA exact match) and time one multimodal LLM run."""
        from omnifuse.tasks.generate.sweep import sweep_run

        return sweep_run(recipe, job)


GENERATE = GenerateTask()
