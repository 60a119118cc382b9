"""Evaluation of a fusion classifier: scores, robustness to missing and noisy modalities, the run report.

Writes into the run directory:

- ``predictions.jsonl``: per sample its class, the prediction and whether it is right (``compare``);
- ``eval.json``: accuracy (with a 95 % bootstrap interval), macro and per-class precision / recall / F1,
  the confusion matrix (:func:`omnifuse.eval.metrics.classification_scores`), ε spent under DP-SGD;
- ``robustness.json``: accuracy with each modality missing, two ways — *zeroed* (its normalised features set
  to 0, which is the training mean under ``standardize``; the model is not told) and *dropped* (the model is
  told: late fusion leaves the modality's vote out, attention and gates renormalise over the other
  modalities, the transformer masks its tokens; concat, tensor and low-rank tensor fusion get a zero vector
  after the modality's projection instead of its projection of zero features, data-level fusion a zero
  channel) — and with Gaussian noise of
  each ``noise_std`` added to the normalised features of one modality, or of all;
- ``confusion.png``, ``curves.png`` (loss and accuracy per epoch) and ``report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from omnifuse.atomic import atomic_write_text  # noqa: E402
from omnifuse.errors import OmnifuseError  # noqa: E402
from omnifuse.eval.importance import (  # noqa: E402
    ImportanceSettings,
    importance_markdown,
    importance_row,
    importance_summary,
    mean_over_draws,
    need_two,
    noise_like,
    permuted_rows,
)
from omnifuse.eval.metrics import classification_scores  # noqa: E402
from omnifuse.eval.runfiles import EPOCH, read_records  # noqa: E402
from omnifuse.eval.stats import bootstrap_ci  # noqa: E402
from omnifuse.models.classifier import FusionClassifier  # noqa: E402
from omnifuse.recipe import ClassifierRecipe  # noqa: E402
from omnifuse.rundir import RunDir  # noqa: E402
from omnifuse.runtime import Placement  # noqa: E402
from omnifuse.tasks.classify.features import FeatureSplit, accuracy, predict  # noqa: E402

ROBUSTNESS_SEED = 1234
PREDICTIONS = "predictions.jsonl"


def without_modality(split: FeatureSplit, mods: list[str], k: int) -> tuple[FeatureSplit, torch.Tensor]:
    """The split with modality ``mods[k]``'s features zeroed, and the mask that tells the model it is missing."""
    m = mods[k]
    zeroed = FeatureSplit(
        split.samples, dict(split.features, **{m: torch.zeros_like(split.features[m])}), split.labels
    )
    present = torch.ones(len(split), len(mods), device=split.labels.device)
    present[:, k] = 0
    return zeroed, present


def robustness(
    model: FusionClassifier,
    split: FeatureSplit,
    noise_std: tuple[float, ...],
    missing: bool = True,
    placement: Placement | None = None,
) -> dict:
    """Accuracies under changed inputs (see the module docstring); same samples as the clean score. The
    changed features are made on the CPU beside the split (the noise from a seeded CPU generator, so it is
    the same on every device) and copied to the model's device chunk by chunk (:func:`predict`)."""
    mods = model.modalities
    out: dict = {"clean": accuracy(model, split, placement=placement), "missing": {}, "noise": {}}
    if missing and len(mods) > 1:
        for k, m in enumerate(mods):
            zeroed, present = without_modality(split, mods, k)
            out["missing"][m] = {
                "zeroed": accuracy(model, zeroed, placement=placement),
                "dropped": accuracy(model, zeroed, present, placement=placement),
            }
    g = torch.Generator().manual_seed(ROBUSTNESS_SEED)
    for std in noise_std:
        row = {}
        for target in [*mods, "all"] if len(mods) > 1 else mods:
            feats = {
                m: x + std * torch.randn(x.shape, generator=g, device=g.device).to(x.device)
                if target in (m, "all")
                else x
                for m, x in split.features.items()
            }
            row[target] = accuracy(
                model, FeatureSplit(split.samples, feats, split.labels), placement=placement
            )
        out["noise"][str(std)] = row
    return out


FEATURE_NOISE = (
    "feature space: the normalised frozen-encoder features (the head's input) replaced by Gaussian noise with "
    "their per-element mean and standard deviation over the eval samples"
)


def correct(
    model: FusionClassifier, split: FeatureSplit, present: torch.Tensor | None = None,
    placement: Placement | None = None,
) -> list[float]:  # fmt: skip
    """1.0 where the model's class is the sample's, else 0.0: one score per sample."""
    guess = predict(model, split.features, present, placement=placement).argmax(-1)
    return (guess == split.labels.to(guess.device)).double().cpu().tolist()


def _perturbed(split: FeatureSplit, mods: list[str], k: int, perturbation: str, seed: int):
    """(split, present mask) with modality ``mods[k]`` removed (dropped, as the model is told), permuted or
    replaced by noise."""
    if perturbation == "remove":
        return without_modality(split, mods, k)
    x = split.features[mods[k]]
    changed = permuted_rows(x, seed) if perturbation == "permute" else noise_like(x, seed)
    return FeatureSplit(split.samples, dict(split.features, **{mods[k]: changed}), split.labels), None


def importance(
    model: FusionClassifier,
    split: FeatureSplit,
    settings: ImportanceSettings,
    placement: Placement | None = None,
) -> dict:
    """Each modality's importance (:mod:`omnifuse.eval.importance`): accuracy intact against accuracy with the
    modality removed, permuted across samples or replaced by noise, paired over the eval samples."""
    need_two(len(split))
    mods = list(model.modalities)
    intact = correct(model, split, placement=placement)
    rows, notes = [], []
    for k, m in enumerate(mods):
        for perturbation in settings.perturbations:
            if perturbation == "remove" and len(mods) == 1:
                notes.append(
                    f"remove: not measured, {m} is the model's only modality (nothing would be left)"
                )
                continue
            draws = [
                correct(model, *_perturbed(split, mods, k, perturbation, seed), placement)
                for seed in settings.seeds(k, perturbation)
            ]
            rows.append(importance_row(m, perturbation, "accuracy", intact, mean_over_draws(draws)))
    if not rows:
        raise OmnifuseError(
            f"--perturbations {','.join(settings.perturbations)}: nothing to measure on a one-modality classifier "
            f"({mods[0]}); use permute or noise"
        )
    return importance_summary(rows, settings, FEATURE_NOISE, notes)


def robustness_table(rob: dict) -> list[str]:
    """Markdown rows: one line per condition, accuracy in percent."""
    lines = ["| condition | accuracy |", "|---|---|", f"| clean | {100 * rob['clean']:.1f} % |"]
    for m, v in rob["missing"].items():
        lines.append(f"| {m} missing, zeroed | {100 * v['zeroed']:.1f} % |")
        lines.append(f"| {m} missing, dropped | {100 * v['dropped']:.1f} % |")
    for std, row in rob["noise"].items():
        for target, acc in row.items():
            lines.append(f"| noise σ={std} on {target} | {100 * acc:.1f} % |")
    return lines


def plot_confusion(confusion: np.ndarray, labels: list[str], path: Path) -> None:
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 10 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = confusion.max() if confusion.size else 0
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            if confusion[i, j]:
                color = "white" if confusion[i, j] > top / 2 else "black"
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    _save(fig, path)


def plot_curves(metrics_file: Path, path: Path) -> bool:
    records = read_records(metrics_file, EPOCH, "metrics file") if metrics_file.exists() else []
    if not records:
        return False
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(epochs, [r["loss"] for r in records], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [100 * r["train_accuracy"] for r in records], color="tab:orange", label="train accuracy")
    ax2.plot(epochs, [100 * r["eval_accuracy"] for r in records], color="tab:green", label="eval accuracy")
    ax2.set_ylabel("accuracy (%)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def evaluate_classifier(
    run: RunDir,
    recipe: ClassifierRecipe,
    model: FusionClassifier,
    split: FeatureSplit,
    classes: list[str],
    epsilon: float | None,
    progress: bool = True,
    placement: Placement | None = None,
    importance_settings: ImportanceSettings | None = None,
) -> dict:
    """Score ``model`` on ``split`` and write eval.json, predictions.jsonl, robustness.json, the plots and
    report.md. The same scores at the end of training and in ``omnifuse eval``; forward passes on
    ``placement`` (default: where the model is, in its parameters' dtype). ``importance_settings``
    (``eval --importance``): each modality's importance too, in eval.json and the report."""
    pred = predict(model, split.features, placement=placement).argmax(-1)
    truth, guess = [classes[i] for i in split.labels.tolist()], [classes[i] for i in pred.tolist()]
    scores = classification_scores(truth, guess, labels=classes)
    ci = bootstrap_ci(scores.correct)
    result = {
        "task": "classify",
        "data": recipe.data.eval,
        "n": len(split),
        "fusion": recipe.model.fusion.type,
        "modalities": model.modalities,
        **scores.summary(),
        "accuracy_ci95": [ci.low, ci.high],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if recipe.privacy is not None:
        result["privacy"] = {
            "epsilon": epsilon,
            "target_epsilon": recipe.privacy.target_epsilon,
            "delta": recipe.privacy.delta,
            "max_grad_norm": recipe.privacy.max_grad_norm,
        }
    if importance_settings is not None:
        result["importance"] = importance(model, split, importance_settings, placement)
    atomic_write_text(run.path / "eval.json", json.dumps(result, indent=2))
    write_predictions(run, split, truth, guess)
    rob = None
    if recipe.eval.robustness is not None:
        r = recipe.eval.robustness
        rob = robustness(model, split, r.noise_std, r.missing, placement)
        atomic_write_text(run.path / "robustness.json", json.dumps(rob, indent=2))
    plot_confusion(scores.confusion, classes, run.path / "confusion.png")
    curves = plot_curves(run.metrics_file, run.path / "curves.png")
    write_report(run, recipe, result, rob, curves)
    return result


def write_predictions(run: RunDir, split: FeatureSplit, truth: list[str], guess: list[str]) -> None:
    """RUN/predictions.jsonl: one line per sample, what ``omnifuse compare`` pairs (grouped by true class)."""
    lines = [
        json.dumps(
            {
                "id": s.id,
                "correct": t == g,
                "score": float(t == g),
                "question_type": t,
                "answer": t,
                "prediction": g,
            }
        )
        + "\n"
        for s, t, g in zip(split.samples, truth, guess, strict=True)
    ]
    atomic_write_text(run.path / PREDICTIONS, "".join(lines))


def write_report(run: RunDir, recipe: ClassifierRecipe, result: dict, rob: dict | None, curves: bool) -> None:
    lo, hi = result["accuracy_ci95"]
    encoders = ", ".join(f"{m}: {s.type}" for m, s in sorted(recipe.model.encoders.items()))
    lines = [
        f"# {recipe.name}",
        "",
        f"Classifier with **{recipe.model.fusion.type}** fusion over {encoders} "
        f"({recipe.model.feature_form()} features), {result['trainable_params']:,} trainable parameters; "
        f"trained on `{recipe.data.train}`, evaluated on `{recipe.data.eval}` ({result['n']} samples).",
        "",
        f"- accuracy: **{100 * result['accuracy']:.1f} %** [95 % bootstrap CI {100 * lo:.1f}, {100 * hi:.1f}]",
        f"- macro precision / recall / F1: {result['macro_precision']:.3f} / {result['macro_recall']:.3f} / "
        f"{result['macro_f1']:.3f}",
    ]
    if "privacy" in result:
        p = result["privacy"]
        lines.append(
            f"- differential privacy (DP-SGD): ε = {p['epsilon']:.2f} spent (target {p['target_epsilon']}) at "
            f"δ = {p['delta']:g}, clipping norm {p['max_grad_norm']}"
        )
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for c, v in result["per_class"].items():
        lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    lines += ["", "![confusion matrix](confusion.png)", ""]
    if curves:
        lines += ["![training curves](curves.png)", ""]
    if rob is not None:
        lines += [
            "## Robustness",
            "",
            "Missing modality: *zeroed* sets its normalised features to 0 without telling the model; *dropped* "
            "tells the model (late fusion leaves its vote out, attention / gates renormalise, the transformer "
            "masks its tokens; concat / tensor / low-rank tensor fusion get a zero vector after the projection). "
            "Noise: Gaussian, on "
            "the normalised features.",
            "",
            *robustness_table(rob),
            "",
        ]
    lines += importance_markdown(result.get("importance"))
    atomic_write_text(run.path / "report.md", "\n".join(lines))
