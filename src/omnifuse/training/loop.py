"""The training loop: stages in order, AdamW, warm-up + cosine decay, gradient accumulation,
seeded data order, metrics.jsonl, atomic checkpoints and exact resume.

Data order is a pure function of (seed, stage index, epoch), and the learning rate a pure function of
the step, so resuming from a checkpoint (weights + optimizer + RNG + step) continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from omnifuse import __version__
from omnifuse.atomic import atomic_write_text, recover_dir
from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.stage_eval import FILE as STAGE_EVAL_FILE
from omnifuse.models.feature_cache import attach_feature_cache
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.models.quantize import training_quantize
from omnifuse.models.stages import apply_stage, changed_parameters
from omnifuse.models.weights import save_tensors_atomic, state_of
from omnifuse.processing import Processor
from omnifuse.progress import progress_bar
from omnifuse.recipe import Recipe, StageSpec
from omnifuse.rundir import RunDir
from omnifuse.runtime import (
    Placement,
    World,
    init_world,
    resolve_placement,
    sum_across,
    threads,
)
from omnifuse.runtime.distributed import barrier, broadcast_error
from omnifuse.training import objectives, parallel, privacy
from omnifuse.training.checkpoint import load_checkpoint, read_progress, save_checkpoint
from omnifuse.training.evaluation import TrainingEvaluation
from omnifuse.training.objectives import StepOutput, distill_step, generative_step, private_lm_step
from omnifuse.training.order import sample_order, stage_order, stage_refs, stage_steps
from omnifuse.training.pruning import prune_before_stage
from omnifuse.training.qformer_pretrain import qformer_step
from omnifuse.training.run_files import (
    checked_progress,
    prepare_run_dir,
    run_meta,
    tensorboard_writer,
    truncate_metrics,
)
from omnifuse.training.setup import training_model

# StageSpec.objective.type → what one micro-batch computes (see training/objectives.py).
OBJECTIVES: dict[str, Callable[[MultimodalLM, Processor, Sequence[Sample], StageSpec], StepOutput]] = {
    "lm": generative_step,
    "qformer": qformer_step,
    "distill": distill_step,
}


@dataclass
class TrainResult:
    run: RunDir
    seconds: float
    steps: int
    final_loss: float | None
    already_finished: bool = False  # --resume of a finished run: nothing was trained or written


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run: RunDir,
        model: MultimodalLM,
        processor: Processor,
        console: Console | None = None,
        progress: bool = True,
        tensorboard: bool = False,
        placement: Placement | None = None,
        world: World | None = None,
    ) -> None:
        self.recipe, self.run, self.model, self.processor = recipe, run, model, processor
        self.world = world or World()
        self.placement = placement or resolve_placement()
        self.scaler = self.placement.grad_scaler()
        # The process count the run's global batch was defined with (a resume may use another).
        self.processes = self.world.size
        self.sharded = parallel.sharded(model)
        main = self.world.main
        self.console = console or Console(stderr=True, quiet=not main)
        self.progress = progress and main
        self._data: dict[str, list[Sample]] = {}
        self.evaluation = TrainingEvaluation(recipe, model, processor, run.path)  # eval.every, after_stage
        self.writer = tensorboard_writer(run.path / "tensorboard") if tensorboard and main else None
        self.accounting: privacy.Accounting | None = None  # DP-SGD (the recipe's privacy section)
        self._private: privacy.PrivateStage | None = None  # the stage being trained privately
        self._resumed_privacy: object = None

    def data_for(self, stage: StageSpec) -> list[Sample]:
        """The stage's samples; a mixture's sources one after another (``limit``: per source)."""
        return [s for part in self._sources(stage) for s in part]

    def _sources(self, stage: StageSpec) -> list[list[Sample]]:
        parts = []
        for ref in stage_refs(stage, self.recipe.data.train):
            if ref not in self._data:
                self._data[ref] = load_data(ref)
            part = self._data[ref]
            parts.append(select_subset(part, stage.limit, self.recipe.seed) if stage.limit else part)
        return parts

    def evaluate_now(self, samples: list[Sample] | None = None) -> dict[str, float]:
        """Score the model being trained on ``samples`` (default: the seeded ``eval.during_limit`` subset);
        see :meth:`TrainingEvaluation.evaluate`."""
        return self.evaluation.evaluate(samples)

    def run_stages(self, resume: bool = False) -> TrainResult:
        recipe, run, model = self.recipe, self.run, self.model
        start = time.perf_counter()
        resume_from = self._resume_point() if resume else None
        if recipe.privacy is not None:
            self.accounting = self._start_privacy(resume_from)
        if self.world.main:
            truncate_metrics(run.metrics_file, resume_from, self.console)
            truncate_metrics(run.path / STAGE_EVAL_FILE, resume_from, self.console)  # eval.after_stage rows
        total_steps, last_loss = 0, None
        if resume_from is not None and resume_from["stage"] == len(recipe.stages):
            # Killed after the final checkpoint but before model.safetensors: the checkpoint holds the result.
            load_checkpoint(run.checkpoint, model, None)
            self.console.print("the final checkpoint is complete: writing the trained weights from it")
        for si, stage in enumerate(recipe.stages):
            if resume_from is not None and si < resume_from["stage"]:
                continue
            if stage.prune is not None:  # its calibration samples come from the stage's data
                prune_before_stage(model, self.processor, stage, self.data_for(stage), recipe.seed, run,
                                   self.console, self.world.main)  # fmt: skip
            groups = apply_stage(model, stage, recipe.lora, self.console)
            for g in groups:
                g["base_lr"] = g["lr"]
            optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
            samples = self.data_for(stage)
            steps = stage_steps(stage, len(samples), self.processes)
            step = 0
            if resume_from is not None and si == resume_from["stage"]:
                # At a stage boundary (step 0) the saved optimizer state belongs to the previous stage.
                step = resume_from["step"]
                load_checkpoint(run.checkpoint, model, optimizer if step else None)
                self.console.print(f"resuming stage {stage.name} at step {step}/{steps}")
                resume_from = None
            changed = changed_parameters(model, recipe.stages[: si + 1])
            objective = objectives.with_packing(
                OBJECTIVES[stage.objective.type], stage, recipe.runtime, self.console.print
            )
            module = parallel.wrap(
                model, objective, self.processor, stage, self.world, self.placement, recipe.runtime
            )  # fmt: skip
            if self.accounting is not None:
                module = self._private_stage(si, stage, optimizer, samples)
            try:
                last_loss = self._run_stage(
                    si, stage, optimizer, groups, samples, steps, step, changed, module
                )
            finally:
                if self._private is not None:
                    self._private.close()
                    self._private = None
            self._privacy_done(si)
            total_steps += steps
        if self.writer is not None:
            self.writer.close()
        if self.world.main or self.sharded:  # sharded weights are gathered by every process
            names = changed_parameters(model, recipe.stages)
            weights = state_of(model, names)
            if self.world.main:
                save_tensors_atomic(weights, run.weights_file, metadata={"omnifuse": __version__})
        barrier()
        return TrainResult(run, time.perf_counter() - start, total_steps, last_loss)

    def _resume_point(self) -> dict | None:
        """The checkpoint's progress (all processes read it: resuming several needs a shared file
        system), and the process count its global batch was defined with."""
        if self.world.main:
            recover_dir(self.run.checkpoint)
        barrier()
        state = read_progress(self.run.checkpoint, ("stage", "step"))
        if state is None:
            return None
        point = checked_progress(state, self.recipe, self.run)
        self._resumed_privacy = state.get("privacy")
        self.processes = int(state["progress"].get("processes", 1))
        return point

    def _start_privacy(self, resume_from: dict | None) -> privacy.Accounting:
        """Plan every stage, fix the noise multiplier (or refuse the target) and print the ε each stage
        spends, before anything trains; on resume, restore the accountant's history from the checkpoint."""
        plans = []
        for s in self.recipe.stages:
            n = len(self.data_for(s))
            plans.append(privacy.StagePlan(s.name, n, s.batch_size * s.grad_accum, stage_steps(s, n)))
        accounting = privacy.Accounting(self.recipe.privacy, plans)
        self.console.print(privacy.describe(accounting))
        if resume_from is not None:
            done = sum(p.steps for p in plans[: resume_from["stage"]]) + resume_from["step"]
            accounting.restore(self._resumed_privacy, done, str(self.run.checkpoint / "state.json"))
        return accounting

    def _private_stage(self, si: int, stage: StageSpec, optimizer, samples: list[Sample]):
        """The stage's step module under DP-SGD (Opacus' GradSampleModule), refused before training
        where per-sample gradients cannot be computed exactly."""
        privacy.check_layers(self.model, stage)
        privacy.check_samples(samples, list(self.recipe.model.encoders), stage)
        step_module = parallel.StepModule(self.model, private_lm_step, self.processor, stage)
        plan = self.accounting.plans[si]
        self._private = privacy.PrivateStage(
            step_module, optimizer, stage, self.accounting, plan, self.recipe.seed, si
        )
        return self._private.module

    def _privacy_done(self, si: int) -> None:
        """After a stage: its ε (alone, and composed with the stages before) printed and in privacy.json."""
        if self.accounting is None or not self.world.main:
            return
        self.console.print(privacy.stage_line(self.accounting, si))
        atomic_write_text(self.run.path / "privacy.json", json.dumps(self.accounting.report(), indent=2))

    def micro_batches(self, stage: StageSpec) -> int:
        """This process's micro-batches per optimizer step: ``grad_accum`` when the process count is the
        one the run started with; on a resume with another, as many as keep the global batch unchanged."""
        total = stage.grad_accum * self.processes
        if total % self.world.size:
            options = [n for n in range(1, total + 1) if total % n == 0]
            raise OmnifuseError(
                f"stage {stage.name!r}: the run started with {self.processes} process(es) (global batch "
                f"{stage.batch_size * total}); {self.world.size} processes cannot split its "
                f"{total} micro-batches per step evenly. Resume with {', '.join(map(str, options))} processes"
            )
        return total // self.world.size

    def _accumulate(self, stage, module, samples, order, step) -> tuple[float, dict, int, int, float]:
        """Forward and backward over this process's micro-batches of one optimizer step; returns the
        step's loss (the mean over all its label tokens, all processes), its named parts, and this
        process's tokens and sequences, and the step's total weight. Each micro-batch back-propagates its loss *sum*; the gradients
        are divided once by the step's total weight, so the split into micro-batches and processes does
        not change the result."""
        micro, world = stage.batch_size, self.world
        count = self.micro_batches(stage)
        sums = [0.0, 0.0]  # weighted loss, weight
        parts: dict[str, float] = {}
        n_tokens, n_seq = 0, 0
        for a in range(count):
            # Global stream: micro-batch (step, a) of the one-process run holds `world.size` slices.
            first = ((step * count + a) * world.size + world.rank) * micro
            batch = [samples[order(first + i)] for i in range(micro)]
            with parallel.no_sync(module, last=a == count - 1):
                with self.placement.autocast():
                    out = module(batch)
                loss = out.loss * out.weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            sums[0] += loss.item()
            sums[1] += out.weight
            for key, value in out.parts.items():
                parts[key] = parts.get(key, 0.0) + value * out.weight
            n_tokens += out.num_tokens
            n_seq += micro
        totals = sum_across([*sums, *parts.values()], self.placement.device)
        weight = totals[1]
        parts = {k: v / weight for k, v in zip(parts, totals[2:], strict=True)}
        return totals[0] / weight, parts, n_tokens, n_seq, weight

    def _optimizer_step(self, stage, module, optimizer, groups, samples, order, step):
        """One optimizer step (its micro-batches, gradient averaging, clipping, the update): loss, parts,
        tokens, sequences, gradient norm. Under DP-SGD the private stage draws and computes the step."""
        if self._private is not None:
            return self._private.step(samples, step)
        total_loss, parts, n_tokens, n_seq, weight = self._accumulate(stage, module, samples, order, step)
        params = [p for g in groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        # DDP averaged the gradients of weighted sums over processes; make them the gradient of the
        # step's mean loss: × processes / total weight.
        parallel.scale_gradients(params, self.world.size / weight if weight else 1.0)
        grad_norm = parallel.clip_gradients(params, stage.max_grad_norm) if stage.max_grad_norm else None
        # With float16 loss scaling an overflowing step is normal: the scaler skips it and lowers the scale.
        _check_finite(stage, step + 1, total_loss, None if self.scaler else grad_norm, self.run)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total_loss, parts, n_tokens, n_seq, grad_norm

    def _run_stage(self, si, stage, optimizer, groups, samples, steps, step, changed, module) -> float | None:
        model, main = self.model, self.world.main
        order, mixture = stage_order(stage, si, self.recipe.seed, self._sources(stage), self.processes)
        if step == 0 and mixture:
            total = sum(mixture.values())
            self.console.print(f"{stage.name} draws " + ", ".join(
                f"{n:,} from {src} ({100 * n / total:.1f} %)" for src, n in mixture.items()
            ))  # fmt: skip
        model.train()
        model.encoders.eval()  # CNN batch-norm statistics stay the pretrained ones
        loss_value = None
        if step == 0 and self.world.distributed:
            self.console.print(
                f"{stage.name}: {self.world.size} processes × batch {stage.batch_size} × "
                f"{self.micro_batches(stage)} micro-batches = global batch "
                f"{stage.batch_size * stage.grad_accum * self.processes}"
            )
        with progress_bar(f"train {stage.name}", steps, enabled=self.progress, completed=step) as bar:
            while step < steps:
                t0 = time.perf_counter()
                factor = lr_factor(step, steps, stage.warmup, stage.min_lr_ratio)
                for g in groups:
                    g["lr"] = g["base_lr"] * factor
                total_loss, parts, n_tokens, n_seq, grad_norm = self._optimizer_step(
                    stage, module, optimizer, groups, samples, order, step
                )
                step += 1
                dt = time.perf_counter() - t0
                threads.tick()
                loss_value = total_loss
                record = {
                    "stage": stage.name,
                    "stage_index": si,
                    "step": step,
                    "loss": round(total_loss, 6),
                    **{key: round(value, 6) for key, value in parts.items()},
                    "lr": groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "tokens_per_s": round(n_tokens * self.world.size / dt, 1),
                    "samples_per_s": round(n_seq * self.world.size / dt, 2),
                    "seconds": round(dt, 4),  # this step's wall time (sweeps sum it over all attempts)
                    "threads": torch.get_num_threads(),  # on the CPU: the cores other processes left free
                    "time": round(time.time(), 3),
                }
                if step == 1 and mixture:
                    record["mixture"] = mixture  # the stage's exact draws per source
                if main:  # eval.every, eval.after_stage (the other processes wait at the next step)
                    self.evaluation.after_step(si, stage, step, steps, record, bar)
                bar.advance(loss=total_loss)
                if main:
                    self._record(stage, step, record)
                if step % stage.save_every == 0 or step == steps:
                    self._checkpoint(si, step, steps, optimizer, changed)
        return loss_value

    def _checkpoint(self, si, step, steps, optimizer, changed) -> None:
        """The main process writes the checkpoint; under FSDP every process gathers its shards first."""
        if not (self.world.main or self.sharded):
            return
        nxt = {"stage": si, "step": step} if step < steps else {"stage": si + 1, "step": 0}
        nxt["processes"] = self.processes
        extra = {"privacy": self.accounting.state()} if self.accounting is not None else None
        save_checkpoint(
            self.run.checkpoint, self.model, changed, optimizer, nxt, write=self.world.main, extra=extra
        )

    def _record(self, stage, step, record) -> None:
        """The main process logs the step (metrics.jsonl, tensorboard)."""
        with self.run.metrics_file.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in record:
                if (
                    key not in ("stage", "stage_index", "step", "time", "grad_norm")
                    and record[key] is not None
                ):
                    self.writer.add_scalar(f"{stage.name}/{key}", record[key], step)


def _check_finite(stage: StageSpec, step: int, loss: float, grad_norm: float | None, run: RunDir) -> None:
    """Stop before an optimizer step that would write NaN / inf into the weights (the checkpoint and any
    saved weights stay the last good ones)."""
    bad = [] if math.isfinite(loss) else [f"loss ({loss})"]
    if grad_norm is not None and not math.isfinite(grad_norm):
        bad.append(f"gradient norm ({grad_norm})")
    if bad:
        raise OmnifuseError(
            f"stage {stage.name!r} step {step}: the {' and the '.join(bad)} is not finite (training diverged); "
            f"nothing of this step was applied or saved. Lower the learning rate (stages.*.lr), add warm-up or "
            f"gradient clipping (max_grad_norm), then start again; the last checkpoint in {run.checkpoint} "
            "holds the last good weights"
        )


def train(
    recipe: Recipe,
    out: Path,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
    parts: dict | None = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Build the recipe's model from its pretrained parts and train it through all stages into ``out``.

    ``parts`` may inject ``llm``/``tokenizer``/``encoders`` (tests use tiny random models). Resuming a
    finished run changes nothing (``already_finished``); a run killed after its final checkpoint gets its
    weights from that checkpoint.
    """
    run = RunDir(Path(out))
    runtime = privacy.private_runtime(recipe.runtime) if recipe.privacy else recipe.runtime  # float32
    world = init_world(resolve_placement(runtime).device)  # checked before the process group
    placement = resolve_placement(runtime, local_rank=world.local_rank)
    quant = training_quantize(recipe.runtime, placement)  # QLoRA on CUDA; refused elsewhere, here
    parallel.check_strategy(recipe, world)
    privacy.check_launch(recipe, world)
    finished, error = False, None
    if world.main:  # only the main process writes the run directory; the others learn its outcome
        try:
            finished = prepare_run_dir(run, recipe, resume)
        except OmnifuseError as exc:
            error = str(exc)
    broadcast_error(error)
    finished = bool(sum_across([finished], placement.device)[0])
    if finished:
        return TrainResult(run, 0.0, 0, None, already_finished=True)
    with (
        run.training() if world.main else contextlib.nullcontext(),
        threads.kept_threads(placement.device, recipe.runtime.threads),
    ):
        seed_everything(recipe.seed)
        fsdp = recipe.runtime.distributed.strategy == "fsdp"
        model, processor = training_model(recipe, run, placement, world, quant, parts, progress, resume)
        if world.main:
            atomic_write_text(run.meta_file, json.dumps(run_meta(recipe, model, placement, world), indent=2))
        trainer = Trainer(recipe, run, model, processor, console, progress, tensorboard, placement, world)
        trainer.console.print(f"training on {placement.describe()}" + (
            f", {world.size} processes ({recipe.runtime.distributed.strategy}"
            + (f": {_shard_count(model)} sharded units)" if fsdp else ")") if world.distributed else ""
        ))  # fmt: skip
        cache = attach_feature_cache(
            model, processor, recipe.runtime.feature_cache, run.path / "feature_cache", recipe.model.encoders,
            world.size, trainer.console.print,
        )  # fmt: skip
        result = trainer.run_stages(resume=resume)
        if cache is not None:  # the run is finished: its training images' features are of no further use
            trainer.console.print(cache.describe() + " (removed: the run is finished)")
            shutil.rmtree(cache.root, ignore_errors=True)
        return result


def _shard_count(model) -> int:
    return sum(1 for m in model.modules() if parallel.sharded(m))


__all__ = ["TrainResult", "Trainer", "lr_factor", "prepare_run_dir", "sample_order", "train"]
