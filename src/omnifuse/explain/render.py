"""Explanations as files: heatmaps over the image, the logit-lens plot and explain.json."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from omnifuse.atomic import atomic_write_text  # noqa: E402
from omnifuse.explain.attribution import Explanation  # noqa: E402
from omnifuse.explain.lens import LensResult  # noqa: E402
from omnifuse.explain.perturbation import PerturbationResult  # noqa: E402

ATTENTION_PNG = "attention.png"
GRADIENT_PNG = "gradient.png"
LENS_PNG = "logit_lens.png"
MODALITY_PNG = "modality.png"
METHOD_TITLES = {"shap": "Kernel SHAP", "lime": "LIME", "occlusion": "occlusion"}
JSON_FILE = "explain.json"


def heatmap_png(
    image: Image.Image, heat: np.ndarray, title: str, out: Path, grid: tuple[int, int] | None = None
) -> None:
    """The image, and the image with ``heat`` (same size) over it; grid lines when the map is a token grid."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(image.convert("L"), cmap="gray", alpha=0.6)
    shown = axes[1].imshow(heat, cmap="inferno", alpha=0.65, interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    if grid is not None:
        h, w = heat.shape
        for r in range(1, grid[0]):
            axes[1].axhline(r * h / grid[0] - 0.5, color="white", linewidth=0.4, alpha=0.5)
        for c in range(1, grid[1]):
            axes[1].axvline(c * w / grid[1] - 0.5, color="white", linewidth=0.4, alpha=0.5)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def perturbation_png(image: Image.Image, result: PerturbationResult, token: str, out: Path) -> None:
    """The image, the signed region values over it (red supports the answer, blue speaks against it)
    and the question tokens' values as bars; every value in nats of log p(answer)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.15, 1]})
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    heat = result.heatmap if result.heatmap is not None else np.zeros((image.height, image.width))
    limit = max(
        float(np.abs(result.region_values).max()), float(np.abs(result.token_values).max(initial=0)), 1e-12
    )
    axes[1].imshow(image.convert("L"), cmap="gray", alpha=0.5)
    shown = axes[1].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.7, interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes[:2]:
        ax.axis("off")
    runs = "" if result.samples is None else f", {result.samples} samples, seed {result.seed}"
    regions = (
        "x".join(map(str, result.regions.grid)) + " patches"
        if result.regions.grid
        else f"{result.regions.count} superpixels"
    )
    axes[1].set_title(
        f"{METHOD_TITLES[result.method]} of log p({token!r})\n({regions}{runs})\nred: for the answer, blue: against",
        fontsize=9,
    )
    ys = np.arange(len(result.tokens))
    axes[2].barh(
        ys, result.token_values, color=["tab:red" if v >= 0 else "tab:blue" for v in result.token_values]
    )
    axes[2].set_yticks(ys, [repr(t) for t in result.tokens], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].axvline(0, color="black", linewidth=0.6)
    axes[2].set_xlim(-limit * 1.05, limit * 1.05)
    axes[2].set_xlabel("nats of log p(answer)", fontsize=8)
    axes[2].set_title("question tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def modality_png(results: dict[str, PerturbationResult], token: str, out: Path) -> None:
    """Per method, the sum of the image regions' values and of the question tokens' values (nats). For
    SHAP the two bars add up to log p(answer) − log p(baseline), the black tick."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(results), 4))
    xs = np.arange(len(results))
    image = [r.image_total for r in results.values()]
    question = [r.question_total for r in results.values()]
    ax.bar(xs - 0.2, image, width=0.4, label="image regions", color="tab:orange")
    ax.bar(xs + 0.2, question, width=0.4, label="question tokens", color="tab:purple")
    for x, r in zip(xs, results.values(), strict=True):
        ax.plot([x - 0.4, x + 0.4], [r.full_log_prob - r.baseline_log_prob] * 2, color="black", linewidth=1.2)
    ax.axhline(0, color="gray", linewidth=0.6)
    labels = [
        f"{METHOD_TITLES[m]}\nimage: {100 * r.image_abs_share():.0f} % of Σ|value|"
        for m, r in results.items()
    ]
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("sum of attributions (nats of log p)")
    ax.set_title(
        f"modality contribution to log p({token!r})\nblack: log p(input) − log p(baseline)", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def lens_png(lens: LensResult, token: str, out: Path) -> None:
    """Probability (log scale) and rank of the first answer token per layer, top token annotated."""
    layers = [e.layer for e in lens.layers]
    probs = [max(e.prob[0], 1e-12) for e in lens.layers]
    ranks = [e.rank[0] for e in lens.layers]
    fig, (ax_p, ax_r) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax_p.plot(layers, probs, marker="o", markersize=3)
    ax_p.set_yscale("log")
    ax_p.set_ylabel(f"p({token!r}) (floor 1e-12)")
    ax_p.grid(alpha=0.3)
    for e in lens.layers:
        ax_p.annotate(e.top_token[0].strip() or repr(e.top_token[0]), (e.layer, max(e.top_prob[0], 1e-12)),
                      fontsize=6, rotation=60, ha="left", va="bottom", color="gray")  # fmt: skip
    ax_p.scatter(
        layers, [max(e.top_prob[0], 1e-12) for e in lens.layers], s=6, color="gray", label="top token"
    )
    ax_p.legend(fontsize=7, loc="lower right")
    ax_r.plot(layers, ranks, marker="o", markersize=3, color="tab:red")
    ax_r.set_yscale("log")
    ax_r.invert_yaxis()
    ax_r.set_ylabel("rank (1 = top)")
    ax_r.set_xlabel("decoder layer (lens: final norm + LM head on its output)")
    ax_r.grid(alpha=0.3)
    fig.suptitle(f"logit lens for the answer token {token!r}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_explanation(
    expl: Explanation, image: Image.Image, out_dir: Path, image_path: str | None = None
) -> dict:
    """Write the PNGs and explain.json into ``out_dir``; returns the JSON object written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = image.convert("RGB")
    token = expl.target_tokens[0]
    files: dict[str, str | None] = {"attention": None, "gradient": None, "logit_lens": LENS_PNG}
    att = expl.attention
    if "attention" in expl.methods and att is not None and att.heatmap is not None:
        layers = (
            f"layers {att.layers[0]}-{att.layers[-1]}" if len(att.layers) > 1 else f"layer {att.layers[0]}"
        )
        heatmap_png(image, att.heatmap, f"attention of {token!r} to image tokens\n(mean over heads, {layers}; "
                    f"image share {100 * att.image_share:.1f} %)", out_dir / ATTENTION_PNG, att.grid)  # fmt: skip
        files["attention"] = ATTENTION_PNG
    if "gradient" in expl.methods and expl.gradient.heatmap is not None:
        heatmap_png(
            image, expl.gradient.heatmap, f"|gradient × input| of log p({token!r})", out_dir / GRADIENT_PNG
        )
        files["gradient"] = GRADIENT_PNG
    lens_png(expl.lens, token, out_dir / LENS_PNG)
    for method, result in expl.perturbations.items():
        perturbation_png(image, result, token, out_dir / f"{method}.png")
        files[method] = f"{method}.png"
    if expl.perturbations:
        modality_png(expl.perturbations, token, out_dir / MODALITY_PNG)
        files["modality"] = MODALITY_PNG
    obj = expl.to_json()
    obj["image"] = image_path
    obj["files"] = files
    atomic_write_text(out_dir / JSON_FILE, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    return obj


def classifier_png(result, out: Path) -> None:
    """One panel per modality: the value of each feature group (token or block of dimensions)."""
    mods = result.modalities
    fig, axes = plt.subplots(1, len(mods), figsize=(4.2 * len(mods), 3.6), squeeze=False)
    limit = max([float(np.abs(m.values).max(initial=0)) for m in mods] + [1e-12])
    for ax, m in zip(axes[0], mods, strict=True):
        xs = np.arange(len(m.values))
        ax.bar(xs, m.values, color=["tab:red" if v >= 0 else "tab:blue" for v in m.values])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylim(-limit * 1.05, limit * 1.05)
        ax.set_xlabel(f"{m.unit} of the {m.modality} features", fontsize=8)
        ax.set_title(f"{m.modality}: Σ {m.total:+.3f} nats", fontsize=9)
    axes[0][0].set_ylabel(f"nats of log p({result.target!r})")
    runs = "" if result.samples is None else f" ({result.samples} samples, seed {result.seed})"
    fig.suptitle(
        f"{METHOD_TITLES[result.method]}{runs} of log p({result.target!r}); red: for, blue: against",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def classifier_modality_png(results: dict, out: Path) -> None:
    """Per method and modality, the sum of its feature groups' values (nats of log p(class))."""
    methods = list(results)
    mods = [m.modality for m in results[methods[0]].modalities]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 4))
    width = 0.8 / len(mods)
    for k, mod in enumerate(mods):
        totals = [next(m.total for m in results[meth].modalities if m.modality == mod) for meth in methods]
        ax.bar(np.arange(len(methods)) - 0.4 + width * (k + 0.5), totals, width=width, label=mod)
    for x, r in enumerate(results.values()):
        ax.plot([x - 0.4, x + 0.4], [r.log_prob - r.baseline_log_prob] * 2, color="black", linewidth=1.2)
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.set_xticks(np.arange(len(methods)), [METHOD_TITLES[m] for m in methods], fontsize=8)
    ax.set_ylabel("sum of attributions (nats of log p)")
    target = next(iter(results.values())).target
    ax.set_title(
        f"modality contribution to log p({target!r})\nblack: log p(input) − log p(all features at 0)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_classifier_explanation(results: dict, inputs: dict, out_dir: Path) -> dict:
    """PNG per method, modality.png and explain.json for a classifier run; returns the JSON written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for method, result in results.items():
        classifier_png(result, out_dir / f"{method}.png")
        files[method] = f"{method}.png"
    classifier_modality_png(results, out_dir / MODALITY_PNG)
    files["modality"] = MODALITY_PNG
    first = next(iter(results.values()))
    obj = {"task": "classify", "inputs": inputs, "class": first.target, "class_probs": first.class_probs,
           "methods": list(results), "perturbation": {m: r.to_json() for m, r in results.items()}, "files": files}  # fmt: skip
    atomic_write_text(out_dir / JSON_FILE, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    return obj
