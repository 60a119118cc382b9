"""Run report: markdown with the scores, a loss-curve PNG and a grid of sample predictions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from omnifuse.atomic import atomic_write_text  # noqa: E402
from omnifuse.data.sample import Sample  # noqa: E402
from omnifuse.errors import OmnifuseError  # noqa: E402
from omnifuse.eval.captioning import caption_table  # noqa: E402
from omnifuse.eval.importance import importance_markdown
from omnifuse.eval.probes import ProbeRow  # noqa: E402
from omnifuse.eval.runfiles import STEP, read_records  # noqa: E402
from omnifuse.eval.scoring import metric_markdown  # noqa: E402
from omnifuse.eval.stage_eval import stage_markdown  # noqa: E402
from omnifuse.eval.vqa import VQAResult  # noqa: E402
from omnifuse.processing.processor import load_image  # noqa: E402
from omnifuse.rundir import RunDir  # noqa: E402
from omnifuse.untrusted import read_text  # noqa: E402


def plot_loss(metrics_file: Path, out: Path) -> bool:
    if not metrics_file.exists():
        return False
    records = read_records(metrics_file, STEP, "metrics file")
    if not records:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = 0
    evals: list[tuple[int, float]] = []
    for stage in dict.fromkeys(r["stage"] for r in records):
        rs = [r for r in records if r["stage"] == stage]
        xs = list(range(x, x + len(rs)))
        ax.plot(xs, [r["loss"] for r in rs], label=stage, linewidth=1)
        evals += [(xi, r["eval_accuracy"]) for xi, r in zip(xs, rs, strict=True) if "eval_accuracy" in r]
        x += len(rs)
    ax.set_xlabel("optimizer step (all stages)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(loc="upper left")
    if evals:  # evaluation during training (recipe eval.every) on a second axis
        ax2 = ax.twinx()
        ax2.plot(
            [e[0] for e in evals], [100 * e[1] for e in evals], "o-", color="black", label="eval accuracy"
        )
        ax2.set_ylabel("eval accuracy (%)")
        ax2.set_ylim(0, 100)
        ax2.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_samples(samples: list[Sample], predictions: list[dict], out: Path, n: int = 8) -> bool:
    pairs = [(s, p) for s, p in zip(samples, predictions, strict=True) if s.images()][:n]
    if not pairs:
        return False
    cols = min(4, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (s, p) in zip(axes.flat, pairs, strict=False):
        ax.imshow(load_image(s.images()[0], s.id))
        question = " ".join(part.text for m in s.prompt() for part in m.parts if hasattr(part, "text"))
        mark = "✓" if p["correct"] else "✗"
        ax.set_title(f"{question}\nanswer: {p['answer']}\npredicted: {p['prediction']} {mark}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def _ci_text(ci) -> str:
    return f" (95 % CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else ""


def _type_table(result: VQAResult, blind: VQAResult | None) -> list[str]:
    head = "| question type | n | accuracy [95 % CI] |" + (" blind |" if blind else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if blind else "")]
    for t, v in result.per_type.items():
        ci = v.get("ci95")
        ci_cell = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
        row = f"| {t} | {v['n']} | {100 * v['accuracy']:.1f} %{ci_cell} |"
        if blind:
            row += f" {100 * blind.per_type.get(t, {'accuracy': 0})['accuracy']:.1f} % |"
        lines.append(row)
    return lines


def _robustness_table(result: VQAResult, probes: list[ProbeRow]) -> list[str]:
    types = list(result.per_type)
    lines = [
        "| probe | accuracy | " + " | ".join(types) + " | answers changed |",
        "|---|---:|" + "---:|" * len(types) + "---:|",
        f"| clean | {100 * result.accuracy:.1f} % | "
        + " | ".join(f"{100 * result.per_type[t]['accuracy']:.1f} %" for t in types)
        + " | – |",
    ]
    for row in probes:
        cells = [f"{100 * row.result.per_type.get(t, {'accuracy': 0.0})['accuracy']:.1f} %" for t in types]
        lines.append(
            f"| {row.probe} | {100 * row.result.accuracy:.1f} % | "
            + " | ".join(cells)
            + f" | {100 * row.changed:.1f} % |"
        )
    return lines


def caption_sections(captions: dict | None) -> list[str]:
    """Markdown per captioning stage: BLEU-4 / CIDEr-D / ROUGE-L with CIs, then a few captions."""
    lines: list[str] = []
    for stage, scores in (captions or {}).items():
        title, columns, rows = caption_table(scores)
        lines += [f"## Captioning: stage {stage}", "",
                  f"Held-out images of `{scores['data']}`, captioned by the {scores['decoder']} decoder; {title}.", "",
                  "| " + " | ".join(columns) + " |", "|---|---:|", *("| " + " | ".join(r) + " |" for r in rows), ""]  # fmt: skip
        examples = scores.get("examples") or []
        if examples:
            lines += ["| image | caption | references |", "|---|---|---|"]
            lines += [
                f"| {e['id']} | {e['prediction']!r} | {' / '.join(e['references'])} |" for e in examples
            ]
            lines.append("")
    return lines


def write_report(
    run: RunDir,
    result: VQAResult,
    blind: VQAResult | None,
    samples: list[Sample],
    timings: dict[str, float],
    data_ref: str,
    probes: list[ProbeRow] | None = None,
    captions: dict | None = None,
    importance: dict | None = None,
) -> Path:
    """Write RUN/report.md (+ loss.png, samples.png); returns the markdown path. ``captions``: a qformer
    stage's held-out captioning scores by stage (:mod:`omnifuse.eval.qformer_captions`); ``importance``:
    eval --importance's table (:mod:`omnifuse.eval.importance`)."""
    recipe = run.recipe()
    lines = [f"# omnifuse run: {recipe.name}", ""]
    lines.append(
        f"Evaluated on `{data_ref}` ({result.n} questions, exact match after normalisation; "
        "95 % bootstrap confidence intervals over questions)."
    )
    lines.append("")
    lines.append(f"- accuracy: **{100 * result.accuracy:.1f} %**{_ci_text(result.ci95)}")
    if blind is not None:
        lines.append(
            f"- blind baseline (same model, images removed): {100 * blind.accuracy:.1f} %{_ci_text(blind.ci95)}"
        )
    for k, v in timings.items():
        lines.append(f"- {k}: {v:.1f} s")
    lines += ["", *_type_table(result, blind), ""]
    lines += metric_markdown(result.metrics)  # per-sample metrics' tables (grounding: Acc@0.5, mIoU)
    lines += stage_markdown(run.path)  # eval.after_stage: stage × task metric
    if probes:
        lines += ["## Robustness probes", "", "Same questions, changed inputs (omnifuse.eval.probes).", ""]
        lines += [*_robustness_table(result, probes), ""]
    lines += importance_markdown(importance)
    lines += caption_sections(captions)
    try:
        if plot_loss(run.metrics_file, run.path / "loss.png"):
            lines += ["## Training loss", "", "![loss](loss.png)", ""]
    except OmnifuseError as exc:  # the scores are what this report is for; a damaged log costs the curve only
        lines += ["## Training loss", "", f"Not drawn: {exc}", ""]
    if plot_samples(samples, result.predictions, run.path / "samples.png"):
        lines += ["## Sample predictions", "", "![samples](samples.png)", ""]
    wrong = [p for p in result.predictions if not p["correct"]][:10]
    if wrong:
        lines += ["## Some errors", "", "| id | answer | prediction |", "|---|---|---|"]
        lines += [f"| {p['id']} | {p['answer']} | {p['prediction']!r} |" for p in wrong]
        lines.append("")
    lines += ["## Recipe", "", "```yaml", read_text(run.recipe_file, "run recipe").rstrip(), "```", ""]
    out = run.path / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
