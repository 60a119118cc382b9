"""Training a classic fusion classifier on cached frozen-encoder features.

The frozen encoders run once (features are cached, :mod:`omnifuse.models.features`); the classifier is
then trained in seconds: AdamW on shuffled mini-batches (a seeded order per epoch), optional modality
dropout, and optionally DP-SGD with Opacus. Every epoch logs one line to ``metrics.jsonl`` and writes an
atomic checkpoint (weights, optimizer state, RNG, privacy accountant), so an interrupted run continues
from its last finished epoch with ``--resume``.

Run directory (beside the usual ``recipe.yaml``, ``run.json``, ``model.safetensors``, ``checkpoint/``,
``metrics.jsonl``): ``normalization.safetensors`` (train-split statistics of ``standardize``), ``eval.json``,
``robustness.json``, ``confusion.png``, ``curves.png`` and ``report.md`` (see
:mod:`omnifuse.tasks.classify.evaluation`).

Differential privacy: ``privacy: {target_epsilon, delta, max_grad_norm}`` makes the optimizer DP-SGD's
(per-sample gradients clipped to ``max_grad_norm``, Gaussian noise calibrated by Opacus so that the
whole training spends ``target_epsilon`` at ``delta``; batches by Poisson sampling with expected size
``batch_size``). Only the classifier trains; the encoders are pretrained on other data and frozen, and
the normalisation statistics are computed from the training set without noise — the reported ε covers the
classifier's weights, not those statistics (use ``normalize: l2`` or ``none`` where that matters).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from omnifuse import __version__
from omnifuse.atomic import atomic_write_text, recover_dir
from omnifuse.errors import OmnifuseError
from omnifuse.models.classifier import build_classifier
from omnifuse.models.weights import save_weights
from omnifuse.progress import progress_bar
from omnifuse.recipe import ClassifierRecipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement, place_model, resolve_placement
from omnifuse.tasks.classify.evaluation import evaluate_classifier
from omnifuse.tasks.classify.features import (
    NORMALIZATION,
    FeatureSplit,
    accuracy,
    class_names,
    fit_normalizers,
    make_split,
    raw_features,
    save_normalizers,
    split_samples,
)
from omnifuse.training.checkpoint import load_checkpoint, save_checkpoint
from omnifuse.training.loop import TrainResult, prepare_run_dir, seed_everything
from omnifuse.untrusted import read_text


# ------------------------------------------------------------------ modality dropout
def modality_dropout_mask(batch: int, modalities: int, p: float, generator=None) -> torch.Tensor:
    """``[B, M]`` presence mask: each modality of each sample dropped with probability ``p``, but never all
    of a sample's modalities (then one, drawn uniformly, is kept). Drawn on the CPU (from ``generator``,
    or the global CPU generator that checkpoints keep), whatever device the model is on: the same masks
    on every device, and a resumed run draws what the uninterrupted one drew."""
    cpu = torch.device("cpu")
    if p <= 0 or modalities < 2:
        return torch.ones(batch, modalities, device=cpu)
    present = (torch.rand(batch, modalities, generator=generator, device=cpu) >= p).float()
    none = present.sum(1) == 0
    if none.any():
        keep = torch.randint(modalities, (int(none.sum()),), generator=generator, device=cpu)
        present[none.nonzero().squeeze(1), keep] = 1.0
    return present


def apply_presence(features: dict[str, torch.Tensor], modalities: list[str], present: torch.Tensor) -> dict:
    """Missing modalities' features zeroed (the training mean under ``standardize``)."""
    out = {}
    for k, m in enumerate(modalities):
        x = features[m]
        out[m] = x * present[:, k].reshape((-1,) + (1,) * (x.dim() - 1))
    return out


# ------------------------------------------------------------------ privacy
def check_private_compatible(model: nn.Module, fusion: str) -> nn.Module:
    """Opacus' fixes (MultiheadAttention → DPMultiheadAttention, BatchNorm → GroupNorm), then a check that
    every trainable layer can give per-sample gradients; an error names the layers that cannot."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    model = ModuleValidator.fix(model)
    problems = [str(e) for e in ModuleValidator.validate(model, strict=False)]
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and list(module.buffers(recurse=False)) and type(module) not in GradSampleModule.GRAD_SAMPLERS:
            problems.append(
                f"{name or 'the model'} ({type(module).__name__}) has trainable weights and buffers"
            )
    if problems:
        raise OmnifuseError(
            f"privacy: the {fusion} fusion head cannot be trained with DP-SGD (Opacus): {'; '.join(problems)}. "
            "Remove privacy from the recipe or choose another fusion."
        )
    return model


@dataclass
class Private:
    engine: object
    delta: float

    def epsilon(self) -> float:
        return float(self.engine.get_epsilon(self.delta))


# ------------------------------------------------------------------ placement
def classifier_placement(recipe: ClassifierRecipe) -> Placement:
    """The recipe's ``runtime`` device and dtype (``--device`` / ``--dtype`` write them there). DP-SGD
    trains in float32: ``auto`` means float32 there, and a low-precision dtype is refused."""
    spec = recipe.runtime
    if recipe.privacy is not None and spec.dtype in ("auto", "fast"):
        spec = spec.model_copy(update={"dtype": "float32"})
    placement = resolve_placement(spec)
    if recipe.privacy is not None and placement.mixed:
        name = str(placement.dtype).removeprefix("torch.")
        raise OmnifuseError(
            f"runtime.dtype: DP-SGD (the recipe's privacy section) trains in float32 only, and this run asks for "
            f"{name}. Opacus clips every sample's gradient to privacy.max_grad_norm, and the ε it reports "
            f"assumes that bound holds exactly; under {name} autocast those per-sample gradients and their "
            "norms are computed with a few significant digits, so a clipped gradient can exceed the bound. Set "
            "runtime.dtype to float32, auto or fast (both float32 under DP-SGD), or drop --dtype; the device "
            "(runtime.device, --device) can stay as it is."
        )
    return placement


# ------------------------------------------------------------------ training
def combiner_holdout(n: int, fraction: float, seed: int) -> torch.Tensor:
    """``[n]`` bool: a seeded ``fraction`` of the training samples, kept for the combiner."""
    g = torch.Generator().manual_seed(seed + 7717)
    flags = torch.zeros(n, dtype=torch.bool, device=g.device)
    flags[torch.randperm(n, generator=g, device=g.device)[: round(fraction * n)]] = True
    return flags


def _dataset(split: FeatureSplit, modalities: list[str]) -> TensorDataset:
    holdout = split.holdout
    if holdout is None:
        holdout = torch.zeros(len(split), dtype=torch.bool, device=split.labels.device)
    return TensorDataset(*(split.features[m] for m in modalities), holdout, split.labels)


def _batches(
    split: FeatureSplit, modalities: list[str], batch_size: int, seed: int, epoch: int
) -> DataLoader:
    data = _dataset(split, modalities)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # order is a function of (seed, epoch)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)


def host_batches(loader: DataLoader) -> Iterator:
    """``loader``'s batches, drawn with the CPU as torch's default device: torch's samplers (and Opacus'
    Poisson sampler) make their index tensors on the default device, and these batches are host data
    whatever a caller has set it to; each is copied to the model's device once, in the step."""
    cpu = torch.device("cpu")
    with cpu:
        iterator = iter(loader)
    while True:
        with cpu:
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def train_classifier(
    recipe: ClassifierRecipe,
    out: Path,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> TrainResult:
    """Extract (or load cached) features, train the fusion classifier into ``out``, evaluate it there."""
    console = console or Console(stderr=True)
    placement = classifier_placement(recipe)  # a device or dtype this machine lacks: refused before anything
    run = RunDir(Path(out))
    if prepare_run_dir(run, recipe, resume):
        return TrainResult(run, 0.0, 0, None, already_finished=True)
    with run.training():
        seed_everything(recipe.seed)
        start = time.perf_counter()
        train_samples, eval_samples = split_samples(recipe)
        classes = class_names(train_samples)
        raw_train = raw_features(recipe, train_samples, progress, placement)
        raw_eval = raw_features(recipe, eval_samples, progress, placement)
        norms = fit_normalizers(recipe, raw_train)
        save_normalizers(run.path / NORMALIZATION, norms)
        train = make_split(train_samples, raw_train, norms, classes, "training")
        evaluation = make_split(eval_samples, raw_eval, norms, classes, "eval")
        shapes = {m: tuple(x.shape[1:]) for m, x in train.features.items()}
        meta = {
            "omnifuse": __version__,
            "task": "classify",
            "classes": classes,
            "feature_shapes": {m: list(s) for m, s in shapes.items()},
            "encoders": {m: s.model_dump(mode="json") for m, s in recipe.model.encoders.items()},
            "n_train": len(train),
            "n_eval": len(evaluation),
            "placement": {
                "device": str(placement.device),
                "dtype": str(placement.dtype).removeprefix("torch."),
            },
        }
        atomic_write_text(run.meta_file, json.dumps(meta, indent=2))

        model = build_classifier(recipe.model, shapes, len(classes))
        if model.has_combiner() and recipe.train.combiner_holdout > 0:
            train.holdout = combiner_holdout(len(train), recipe.train.combiner_holdout, recipe.seed)
        if recipe.privacy is not None:
            model = check_private_compatible(model, recipe.model.fusion.type)
        # Every parameter is trained: float32 master weights on the device; forward passes under autocast.
        place_model(model, placement, trained=[n for n, _ in model.named_parameters()])
        console.print(f"training on {placement.describe()}")
        trainer = _Trainer(recipe, run, model, train, evaluation, console, progress, placement)
        trainer.fit(resume)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        save_weights(model, names, run.weights_file, metadata={"omnifuse": __version__})
        if recipe.privacy is not None:  # what `omnifuse eval` reports again: ε is spent by training
            meta["epsilon"] = trainer.epsilon()
            atomic_write_text(run.meta_file, json.dumps(meta, indent=2))
        evaluate_classifier(
            run, recipe, model, evaluation, classes, trainer.epsilon(), progress=progress, placement=placement
        )
        return TrainResult(run, time.perf_counter() - start, trainer.steps, trainer.last_loss)


class _Trainer:
    def __init__(
        self, recipe, run, model, train, evaluation, console, progress, placement: Placement
    ) -> None:
        self.recipe, self.run, self.model, self.placement = recipe, run, model, placement
        self.scaler = placement.grad_scaler()  # float16 only (never under DP-SGD: classifier_placement)
        self.train, self.evaluation = train, evaluation
        self.console, self.progress = console, progress
        self.modalities = model.modalities
        self.steps, self.last_loss = 0, None
        t = recipe.train
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.private: Private | None = None
        self.dp_loader = None
        if recipe.privacy is not None:
            self._make_private()

    def _make_private(self) -> None:
        from opacus import PrivacyEngine

        p, t = self.recipe.privacy, self.recipe.train
        data = _dataset(self.train, self.modalities)
        loader = DataLoader(data, batch_size=min(t.batch_size, len(data)))
        with warnings.catch_warnings():  # Opacus' note on its non-cryptographic RNG: the docs say it
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            # Raised while Opacus searches the noise multiplier, by candidates far from the answer: the
            # multiplier found is the same with RDP orders up to 1024 (checked for ε 0.5–8, batch 64–256).
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            engine = PrivacyEngine(accountant="rdp")
            self.wrapped, self.optimizer, self.dp_loader = engine.make_private_with_epsilon(
                module=self.model,
                optimizer=self.optimizer,
                data_loader=loader,
                target_epsilon=p.target_epsilon,
                target_delta=p.delta,
                epochs=t.epochs,
                max_grad_norm=p.max_grad_norm,
            )
        self.private = Private(engine, p.delta)
        self.console.print(
            f"DP-SGD: noise multiplier {self.optimizer.noise_multiplier:.3f}, clipping norm {p.max_grad_norm}, "
            f"sample rate {1 / len(self.dp_loader):.4f}, target ε {p.target_epsilon} at δ {p.delta}"
        )

    def epsilon(self) -> float | None:
        return None if self.private is None else self.private.epsilon()

    def _resume(self) -> int:
        recover_dir(self.run.checkpoint)
        if not (self.run.checkpoint / "state.json").is_file():
            return 0
        state = load_checkpoint(self.run.checkpoint, self.model, self.optimizer, counts=("epoch",))
        if self.private is not None:
            history = state.get("accountant")
            if not isinstance(history, list) or not all(isinstance(h, list) for h in history):
                raise OmnifuseError(
                    f"{self.run.checkpoint}: the privacy accountant's history is damaged, so the ε spent so "
                    "far is unknown; start the run again into a new --out"
                )
            self.private.engine.accountant.history = [tuple(h) for h in history]
        self.console.print(f"resuming at epoch {state['epoch']}/{self.recipe.train.epochs}")
        return state["epoch"]

    def _loader(self, epoch: int):
        if self.dp_loader is not None:
            return self.dp_loader  # Poisson sampling, drawn from the (checkpointed) global RNG
        return _batches(self.train, self.modalities, self.recipe.train.batch_size, self.recipe.seed, epoch)

    def _step(self, *batch: torch.Tensor) -> tuple[float, int]:
        """One optimizer step on a CPU batch, copied once to the model's device."""
        *xs, holdout, y = (t.to(self.placement.device, non_blocking=True) for t in batch)
        if y.numel() == 0:  # an empty Poisson batch: nothing to learn, but the step still counts for privacy
            self.private.engine.accountant.step(
                noise_multiplier=self.optimizer.noise_multiplier, sample_rate=1 / len(self.dp_loader)
            )
            return 0.0, 0
        present = modality_dropout_mask(len(y), len(self.modalities), self.recipe.train.modality_dropout)
        present = present.to(self.placement.device)
        feats = apply_presence(dict(zip(self.modalities, xs, strict=True)), self.modalities, present)
        holdout = holdout if self.train.holdout is not None else None
        with self.placement.autocast():
            loss, logits = self.model.loss(feats, y, present, holdout)
        if not torch.isfinite(loss):
            raise OmnifuseError(
                f"step {self.steps + 1}: the loss is not finite ({loss.item()}; training diverged); nothing of "
                "this step was applied or saved. Lower train.lr and train again"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # float16: an overflowing step is skipped by the scaler
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.steps += 1
        return loss.item() * len(y), int((logits.argmax(-1) == y).sum())

    def fit(self, resume: bool) -> None:
        t = self.recipe.train
        first = self._resume() if resume else 0
        _truncate_epochs(self.run.metrics_file, first)
        self.model.train()
        with (
            warnings.catch_warnings(),  # Opacus' hooks on layers whose inputs need no gradient: harmless
            progress_bar("train classifier", t.epochs, enabled=self.progress, completed=first) as bar,
        ):
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for epoch in range(first, t.epochs):
                t0 = time.perf_counter()
                total, correct, n = 0.0, 0, 0
                for batch in host_batches(self._loader(epoch)):
                    loss_sum, right = self._step(*batch)
                    total, correct, n = total + loss_sum, correct + right, n + len(batch[-1])
                self.last_loss = total / max(1, n)
                record = {
                    "epoch": epoch + 1,
                    "loss": round(self.last_loss, 6),
                    "train_accuracy": round(correct / max(1, n), 6),
                    "eval_accuracy": round(
                        accuracy(self.model, self.evaluation, placement=self.placement), 6
                    ),
                    "seconds": round(time.perf_counter() - t0, 4),
                    "time": round(time.time(), 3),
                }
                if self.private is not None:
                    record["epsilon"] = round(self.private.epsilon(), 6)
                with self.run.metrics_file.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                names = [n for n, p in self.model.named_parameters() if p.requires_grad]
                progress_state = {"epoch": epoch + 1}
                if self.private is not None:
                    progress_state["accountant"] = [list(h) for h in self.private.engine.accountant.history]
                save_checkpoint(self.run.checkpoint, self.model, names, self.optimizer, progress_state)
                bar.advance(loss=self.last_loss, eval_acc=record["eval_accuracy"])


def _truncate_epochs(path: Path, first: int) -> None:
    """Keep the metric lines of the epochs before ``first`` (a resumed run recomputes the rest)."""
    if not path.is_file():
        return
    keep = []
    for line in read_text(path, "metrics file").splitlines():
        try:
            if json.loads(line)["epoch"] <= first:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):  # a line a killed process was writing, or damaged
            continue
    atomic_write_text(path, "".join(k + "\n" for k in keep))
