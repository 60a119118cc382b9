"""An alignment run's report.md and loss.png."""

from __future__ import annotations

from pathlib import Path

from omnifuse.recipe import AlignRecipe


def plot_history(history: list[dict], out: Path) -> None:
    """Training loss per epoch and the held-out measure logged beside it (second axis). Linear axes: deep
    CCA's loss is negative."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], label="training loss", linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    held = next((k for k in history[0] if k.startswith("eval_")), None)
    if held is not None:
        ax2 = ax.twinx()
        ax2.plot(epochs, [h[held] for h in history], "o-", color="black", markersize=3, label=held)
        ax2.set_ylabel(held.replace("_", " "))
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report_text(recipe: AlignRecipe, evaluation: dict, has_plot: bool) -> str:
    lines = [
        f"# {recipe.name}",
        "",
        f"Alignment with **{recipe.method.type}** of "
        f"{' and '.join(f'{m} ({s.type})' for m, s in recipe.model.encoders.items())}; "
        f"train {recipe.data.train}, eval {recipe.data.eval} ({evaluation['n_eval_pairs']} pairs, "
        f"{evaluation['n_eval_keys']} distinct keys).",
        "",
    ]
    if "retrieval" in evaluation:
        lines += [
            "| direction | R@1 | R@5 | R@10 | median rank | chance R@1 | chance R@10 |",
            "|---|---|---|---|---|---|---|",
        ]
        for d, r in evaluation["retrieval"].items():
            c = evaluation["chance"][d]
            lines.append(
                f"| {d.replace('_', ' ')} | {100 * r['R@1']:.1f} | {100 * r['R@5']:.1f} | {100 * r['R@10']:.1f} | "
                f"{r['median_rank']:g} | {100 * c['R@1']:.1f} | {100 * c['R@10']:.1f} |"
            )
        lines.append("")
    if "canonical_correlations" in evaluation:
        corr = evaluation["canonical_correlations"]["eval"]
        lines += [
            f"Canonical correlations on the eval pairs (first 5): {', '.join(f'{c:.3f}' for c in corr[:5])}; "
            f"sum {sum(corr):.2f}.",
            "",
        ]
    if "translation_relative_mse" in evaluation:
        oracle = evaluation["translation_relative_mse_key_means"]
        lines += [
            "Translation error (MSE / target variance; predicting the mean of the target's key in brackets): "
            + ", ".join(
                f"{d.replace('_', ' ')} {v:.3f} ({oracle[d]:.3f})"
                for d, v in evaluation["translation_relative_mse"].items()
            ),
            "",
        ]
    if "zero_shot" in evaluation:
        z = evaluation["zero_shot"]
        lines += [
            f"Zero-shot on {z['n']} eval samples of the held-out classes {', '.join(evaluation['heldout'])}:",
            "",
            "| candidates | accuracy | chance |",
            "|---|---|---|",
            f"| all {len(evaluation['classes'])} classes | {100 * z['zero_shot_accuracy_all']:.1f} | {100 * z['chance_all']:.1f} |",
            f"| held-out classes only | {100 * z['zero_shot_accuracy_heldout_only']:.1f} | {100 * z['chance_heldout_only']:.1f} |",
            "",
            f"Seen classes (eval samples, among all classes): {100 * evaluation['seen_classes']['accuracy_all']:.1f} %.",
            "",
        ]
    if has_plot:
        lines += ["![training loss](loss.png)", ""]
    return "\n".join(lines)
