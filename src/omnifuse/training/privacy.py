"""DP-SGD for the generative training loop (a recipe's ``privacy`` section), on Opacus.

What one private optimizer step does (:class:`PrivateStage`):

1. **Poisson sampling**: each of the stage's training samples joins the step's batch independently with
   probability ``q = batch_size × grad_accum / samples`` (drawn from a generator seeded by the recipe's
   seed, the stage and the step, so a resumed run draws the same batches). The batch size varies; it is
   cut into micro-batches of ``batch_size``. This is the sampling the RDP accountant assumes.
2. **Per-sample gradients** by Opacus' ``GradSampleModule`` (hooks): it records, for every module with a
   trainable parameter of its own, the activations and back-propagated gradients and forms each sample's
   gradient from them. With the LLM frozen those modules are the connector's ``nn.Linear`` layers and
   LoRA's ``lora_A`` / ``lora_B`` (``nn.Linear`` too); frozen layers get no hooks. A module type without an
   Opacus grad sampler, or with buffers, is refused before training (:func:`check_layers`). The loss is the
   *sum* of per-sample losses, each the mean over that sample's answer tokens
   (``objectives.private_lm_step``), so a sample's gradient does not depend on the others in its batch.
3. **Clip, sum, noise** with Opacus' ``DPOptimizer`` (``clip_and_accumulate``, ``add_noise``): every
   per-sample gradient (all trained parameters together) scaled to norm ≤ ``max_grad_norm``, summed, plus
   Gaussian noise of standard deviation ``noise_multiplier × max_grad_norm``; divided by the *expected*
   batch size (not the drawn one, which depends on the data); then AdamW's update (post-processing).
4. **Accounting**: Opacus' RDP accountant records ``(σ, q, steps)``; all stages share one accountant, so ε
   after a stage is the composition of every stage so far (:class:`Accounting`).

The noise multiplier is one for the whole run: given ``target_epsilon`` it is calibrated by bisection so
that all stages together spend it at ``delta`` (:func:`calibrate`); a target only reachable with noise
larger than the expected batch is refused before training. The accountant's history is saved in the
checkpoint (JSON in state.json) and restored on resume.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import GenerativePrivacySpec, Recipe, RuntimeSpec, StageSpec
from omnifuse.runtime import World

# RDP orders: Opacus' defaults reach only 63; with the small sampling rates of LLM fine-tuning the best
# order is often larger, so more orders give a tighter (still valid) ε.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2**k for k in range(6, 13)]
MAX_SIGMA = 1e4


@contextlib.contextmanager
def opacus_quiet() -> Iterator[None]:
    """Opacus' warnings that say nothing to a user of omnifuse, silenced for library callers too (the CLI
    hides other libraries' warnings unless ``--debug`` anyway): its non-cryptographic RNG (docs/privacy.md
    says so), full backward hooks on layers whose inputs need no gradient (the connector's first layer,
    by design), and the best RDP order at the end of the range (orders go to 4096 here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        warnings.filterwarnings("ignore", message="Using a non-full backward hook")
        yield


# ------------------------------------------------------------------ refusals before anything is built
def private_runtime(runtime: RuntimeSpec) -> RuntimeSpec:
    """DP-SGD trains in float32: ``dtype: auto`` or ``fast`` means float32 (the recipe refuses other dtypes)."""
    return runtime.model_copy(update={"dtype": "float32"}) if runtime.dtype in ("auto", "fast") else runtime


def check_launch(recipe: Recipe, world: World) -> None:
    if recipe.privacy is not None and world.distributed:
        raise OmnifuseError(
            f"privacy: this launch has {world.size} processes, and DP-SGD trains in one. Each process would "
            "clip its own samples' gradients and add its own noise, and the accountant's ε assumes one noised "
            "sum of per-sample gradients per step drawn by one Poisson sampler over the whole data set; "
            "Opacus' distributed optimizer is not wired into omnifuse's loop. Train this recipe in one "
            "process (drop --nproc, torchrun or accelerate launch), or remove the privacy section"
        )


def check_layers(model: nn.Module, stage: StageSpec) -> None:
    """Every module with a trainable parameter of its own must have an Opacus grad sampler and no buffers."""
    from opacus import GradSampleModule

    problems = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if type(module) not in GradSampleModule.GRAD_SAMPLERS:
            problems.append(f"{name} ({type(module).__name__}: no per-sample gradient rule in Opacus)")
        elif list(module.buffers(recurse=False)):
            problems.append(f"{name} ({type(module).__name__}: has buffers, which would not be private)")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise OmnifuseError(
            f"privacy: stage {stage.name!r} trains layers that DP-SGD cannot train here: {shown}. Per-sample "
            "gradients come from Opacus' hooks, which have exact rules for nn.Linear, nn.Embedding, nn.LayerNorm, "
            "GroupNorm and convolutions; the connectors and LoRA adapters (the LLM frozen) are nn.Linear. Freeze "
            "these layers in the stage (trainable: frozen), train the LLM with lora instead of full, or remove "
            "the privacy section"
        )


def check_samples(samples: Sequence[Sample], modalities: Sequence[str], stage: StageSpec) -> None:
    """One media item per modality per sample: the connector's batch must be the samples' batch."""
    for s in samples:
        counts = {"image": len(s.images()), "audio": len(s.audios())}
        wrong = {m: counts.get(m, 0) for m in modalities if counts.get(m, 0) != 1}
        if wrong:
            m, n = next(iter(wrong.items()))
            raise OmnifuseError(
                f"privacy: stage {stage.name!r}: sample {s.id} has {n} {m} item(s). DP-SGD computes each "
                f"sample's gradient from the connector's per-item activations, which holds only with exactly "
                f"one {m} per sample; filter the data to samples with one {m} each, or remove the privacy section"
            )


# ------------------------------------------------------------------ accounting
@dataclass(frozen=True)
class StagePlan:
    name: str
    samples: int
    expected_batch: int  # batch_size × grad_accum
    steps: int

    @property
    def rate(self) -> float:
        return self.expected_batch / self.samples


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    with opacus_quiet():
        return float(accountant.get_epsilon(delta, alphas=ALPHAS))


def plan_epsilon(sigma: float, plans: Sequence[StagePlan], delta: float) -> float:
    return _rdp_epsilon([(sigma, p.rate, p.steps) for p in plans], delta)


def _describe(plans: Sequence[StagePlan]) -> str:
    return "; ".join(
        f"{p.name}: {p.steps} steps, expected batch {p.expected_batch} of {p.samples} samples (rate {p.rate:.4g})"
        for p in plans
    )


def check_plans(plans: Sequence[StagePlan]) -> None:
    for p in plans:
        if p.rate > 1:
            raise OmnifuseError(
                f"privacy: stage {p.name!r} asks for an expected batch of {p.expected_batch} samples "
                f"(batch_size × grad_accum) from {p.samples} training samples; Poisson sampling draws each "
                "sample with probability batch / samples, which cannot exceed 1. Lower batch_size or "
                "grad_accum, or train on more samples"
            )


def calibrate(spec: GenerativePrivacySpec, plans: Sequence[StagePlan]) -> float:
    """The one noise multiplier with which all stages together spend ``target_epsilon`` at ``delta``
    (bisection, as Opacus' ``get_noise_multiplier``, over the composition of the stages); refused when
    the noise would exceed the smallest expected batch (the model could not learn)."""
    target, delta = spec.target_epsilon, spec.delta
    low, high = 0.0, 1.0
    while plan_epsilon(high, plans, delta) > target and high < MAX_SIGMA:
        low, high = high, 2 * high
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if plan_epsilon(mid, plans, delta) <= target else (mid, high)
    smallest = min(p.expected_batch for p in plans)
    if high >= MAX_SIGMA or high > smallest:
        shown = "more than 10⁴" if high >= MAX_SIGMA else f"{high:.3g}"
        raise OmnifuseError(
            f"privacy.target_epsilon: ε = {target:g} at δ = {delta:g} is out of reach for this training "
            f"({_describe(plans)}): the noise multiplier would have to be {shown}, larger than the expected "
            f"batch of {smallest} samples, so each step's averaged gradient would carry noise with a standard "
            "deviation above the clipping norm itself — larger than any sample's clipped gradient — and the "
            "model could not learn. Raise target_epsilon, train on more samples, take fewer steps or larger "
            "batches (batch_size × grad_accum), or set privacy.noise_multiplier to choose the noise and have "
            "the ε it spends reported"
        )
    return high


class Accounting:
    """The run's noise multiplier and RDP accountant (one for all stages: ε composes across them)."""

    def __init__(self, spec: GenerativePrivacySpec, plans: Sequence[StagePlan]) -> None:
        from opacus.accountants import RDPAccountant

        check_plans(plans)
        self.spec, self.plans = spec, list(plans)
        self.sigma = spec.noise_multiplier if spec.noise_multiplier is not None else calibrate(spec, plans)
        self.accountant = RDPAccountant()

    def step(self, rate: float) -> None:
        self.accountant.step(noise_multiplier=self.sigma, sample_rate=rate)

    def epsilon(self) -> float:
        return _rdp_epsilon(self.accountant.history, self.spec.delta)

    def summary(self) -> list[dict]:
        """Per stage, as planned: ε of the stage alone and ε of all stages up to it (composed)."""
        delta = self.spec.delta
        return [
            {
                "stage": p.name,
                "steps": p.steps,
                "samples": p.samples,
                "expected_batch": p.expected_batch,
                "sample_rate": p.rate,
                "epsilon_stage": round(plan_epsilon(self.sigma, [p], delta), 4),
                "epsilon_cumulative": round(plan_epsilon(self.sigma, self.plans[: i + 1], delta), 4),
            }
            for i, p in enumerate(self.plans)
        ]

    def report(self) -> dict:
        """``RUN/privacy.json``: what an auditor needs to recompute ε."""
        return {
            "mechanism": "DP-SGD (Opacus GradSampleModule hooks + DPOptimizer clipping and Gaussian noise)",
            "accountant": "RDP (Opacus RDPAccountant), orders up to 4096",
            "sampling": "Poisson (each training sample independently, with probability sample_rate per step)",
            "neighbouring": "add/remove one training sample",
            "noise_multiplier": self.sigma,
            "max_grad_norm": self.spec.max_grad_norm,
            "delta": self.spec.delta,
            "target_epsilon": self.spec.target_epsilon,
            "epsilon_spent": round(self.epsilon(), 4),
            "history": [list(h) for h in self.accountant.history],
            "stages": self.summary(),
        }

    def state(self) -> dict:
        return {"noise_multiplier": self.sigma, "history": [list(h) for h in self.accountant.history]}

    def restore(self, state: object, steps_done: int, where: str) -> None:
        """The checkpoint's accountant history, checked: a run cannot resume with an unknown ε."""
        history = state.get("history") if isinstance(state, dict) else None
        ok = isinstance(history, list) and all(
            isinstance(h, list) and len(h) == 3 and all(isinstance(x, int | float) for x in h)
            for h in history
        )
        if not ok or not math.isclose(state.get("noise_multiplier", -1), self.sigma, rel_tol=1e-9):
            raise OmnifuseError(
                f"{where}: the privacy accountant's state is missing or damaged (or its noise multiplier is "
                "not this recipe's), so the ε spent so far is unknown; start the run again into a new --out"
            )
        if sum(int(h[2]) for h in history) != steps_done:
            raise OmnifuseError(
                f"{where}: the privacy accountant recorded {sum(int(h[2]) for h in history)} steps but the "
                f"checkpoint is at step {steps_done} of the run; the ε spent is unknown. Start the run again "
                "into a new --out"
            )
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]


# ------------------------------------------------------------------ one private stage
def poisson_batch(num: int, rate: float, seed: int, stage_index: int, step: int) -> list[int]:
    """Sample indices of one step: each with probability ``rate`` (a function of seed, stage and step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 100_003 + step + 1)
    return (torch.rand(num, generator=g) < rate).nonzero().squeeze(1).tolist()


class PrivateStage:
    """DP-SGD over one stage: the step module wrapped in Opacus' ``GradSampleModule`` and the stage's
    AdamW in a ``DPOptimizer``. ``close()`` removes the hooks (the model is used on, without them)."""

    def __init__(self, step_module: nn.Module, optimizer, stage: StageSpec, accounting: Accounting,
                 plan: StagePlan, seed: int, stage_index: int) -> None:  # fmt: skip
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.stage, self.accounting, self.plan = stage, accounting, plan
        self.seed, self.stage_index = seed, stage_index
        with opacus_quiet():
            self.module = GradSampleModule(step_module, batch_first=True, loss_reduction="sum", strict=True)
            self.optimizer = DPOptimizer(
                optimizer,
                noise_multiplier=accounting.sigma,
                max_grad_norm=accounting.spec.max_grad_norm,
                expected_batch_size=plan.expected_batch,
                loss_reduction="sum",
            )

    def close(self) -> None:
        self.module._close()

    def backward(self, batch: Sequence[Sample]) -> tuple[float, int]:
        """Forward and backward of ``batch`` in micro-batches: per-sample gradients in ``p.grad_sample``."""
        loss_sum, tokens = 0.0, 0
        for start in range(0, len(batch), self.stage.batch_size):
            with opacus_quiet():
                out = self.module(batch[start : start + self.stage.batch_size])
                out.loss.backward()
            loss_sum += out.loss.item()
            tokens += out.num_tokens
        return loss_sum, tokens

    def per_sample_grads(self, n: int) -> list[torch.Tensor]:
        """``[n, *p.shape]`` per trained parameter (checked: one row per sample)."""
        grads = []
        for p in self.optimizer.params:
            g = p.grad_sample
            g = torch.zeros((0, *p.shape), device=p.device) if g is None and n == 0 else g
            g = torch.cat(g) if isinstance(g, list) else g
            if g is None or len(g) != n:
                raise OmnifuseError(
                    f"privacy: stage {self.stage.name!r}: a trained parameter of shape {tuple(p.shape)} got "
                    f"{'no' if g is None else len(g)} per-sample gradients for a batch of {n} samples; it is "
                    "not used once per sample in the forward pass, so DP-SGD cannot bound each sample's share"
                )
            p.grad_sample = g
            grads.append(g)
        return grads

    def step(self, samples: Sequence[Sample], step: int) -> tuple[float, dict, int, int, float]:
        """One DP-SGD step: loss (mean over the drawn samples), parts, tokens, samples, and the mean
        per-sample gradient norm before clipping (``grad_norm`` in metrics.jsonl)."""
        idx = poisson_batch(len(samples), self.plan.rate, self.seed, self.stage_index, step)
        batch = [samples[i] for i in idx]
        loss_sum, tokens = self.backward(batch) if batch else (0.0, 0)
        grads = self.per_sample_grads(len(batch))
        norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
        clip = self.accounting.spec.max_grad_norm
        opt = self.optimizer
        opt.clip_and_accumulate()
        opt.add_noise()
        for p in opt.params:  # the noised sum over the *expected* batch: the drawn size is data-dependent
            p.grad /= self.plan.expected_batch
        if not math.isfinite(loss_sum):
            raise OmnifuseError(
                f"stage {self.stage.name!r} step {step + 1}: the loss is not finite (training diverged); nothing "
                "of this step was applied or saved. Lower the learning rate (stages.*.lr) and start again"
            )
        opt.original_optimizer.step()
        opt.zero_grad(set_to_none=True)
        self.accounting.step(self.plan.rate)
        parts = {
            "batch": len(batch),
            "clipped": round(float((norms > clip).float().mean()), 4) if len(batch) else 0.0,
            "epsilon": round(self.accounting.epsilon(), 6),
        }
        return (
            loss_sum / max(1, len(batch)),
            parts,
            tokens,
            len(batch),
            float(norms.mean()) if len(batch) else 0.0,
        )


# ------------------------------------------------------------------ what is printed
def describe(accounting: Accounting) -> str:
    spec, rows = accounting.spec, accounting.summary()
    how = (
        f"calibrated to ε {spec.target_epsilon:g}" if spec.target_epsilon is not None else "set by the recipe"
    )
    lines = [
        f"DP-SGD: noise multiplier {accounting.sigma:.4g} ({how}), per-sample clipping norm "
        f"{spec.max_grad_norm:g}, δ {spec.delta:g}, Poisson sampling, RDP accountant; ε each stage spends:"
    ]
    lines += [
        f"  {r['stage']}: {r['steps']} steps at rate {r['sample_rate']:.4g} (expected batch "
        f"{r['expected_batch']} of {r['samples']}): ε {r['epsilon_stage']:.3f} alone, "
        f"{r['epsilon_cumulative']:.3f} with the stages before"
        for r in rows
    ]
    return "\n".join(lines)


def stage_line(accounting: Accounting, stage_index: int) -> str:
    name = accounting.plans[stage_index].name
    return (
        f"{name}: ε spent so far {accounting.epsilon():.3f} at δ {accounting.spec.delta:g} "
        f"(this stage alone {accounting.summary()[stage_index]['epsilon_stage']:.3f}); RUN/privacy.json"
    )
