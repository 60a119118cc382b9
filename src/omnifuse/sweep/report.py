"""Sweep comparison: per variant mean ± 95 % confidence interval over seeds, cost columns, plots, report."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy import stats

from omnifuse.atomic import atomic_write_text


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean (0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n == 1:
        return mean, 0.0
    sem = statistics.stdev(values) / math.sqrt(n)
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int, int] | None:
    """``a − b`` over the seeds both have (same seed: same data order and initialisation, so the
    difference removes that shared variation): mean, 95 % half-width, seeds ``a`` wins, seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, half = mean_ci(diffs)
    return mean, half, sum(d > 0 for d in diffs), len(seeds)


@dataclass(frozen=True)
class VariantSummary:
    """One variant over its seeds. LLM runs fill the token and latency fields; classifier runs the
    macro F1, the ε spent under DP-SGD (mean over seeds) and the accuracy with each modality dropped;
    alignment runs ``metrics`` (R@k per direction and their means; ``accuracy`` is the mean R@1)."""

    variant: str
    seeds: int
    accuracy: float
    ci: float
    accuracies: list[float]
    trainable_params: int
    image_tokens: int | None
    text_tokens_per_image: int | None
    training_samples: int
    train_seconds: float
    latency_ms: float | None
    train_seconds_ci: float = 0.0
    macro_f1: float | None = None
    epsilon: float | None = None
    target_epsilon: float | None = None
    missing: dict[str, float] | None = None
    metrics: dict[str, float] | None = None

    @property
    def classifier(self) -> bool:
        return self.latency_ms is None and not self.metrics

    @property
    def alignment(self) -> bool:
        return bool(self.metrics)


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def summarize(records: Sequence[dict]) -> list[VariantSummary]:
    by_variant: dict[str, list[dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    out = []
    for name, rows in by_variant.items():
        acc = [r["accuracy"] for r in rows]
        mean, ci = mean_ci(acc)
        first = rows[0]
        llm = "latency_s" in first
        missing = None
        if first.get("missing"):
            missing = {m: statistics.fmean(r["missing"][m] for r in rows) for m in first["missing"]}
        metrics = None
        if first.get("metrics"):
            metrics = {k: statistics.fmean(r["metrics"][k] for r in rows) for k in first["metrics"]}
        out.append(
            VariantSummary(
                variant=name,
                seeds=len(rows),
                accuracy=mean,
                ci=ci,
                accuracies=acc,
                trainable_params=first["trainable_params"],
                image_tokens=sum(first["image_tokens"].values()) if llm else None,
                text_tokens_per_image=sum(first["text_tokens_per_image"].values()) if llm else None,
                training_samples=first["training_samples"],
                train_seconds=statistics.fmean(r["train_seconds"] for r in rows),
                latency_ms=1000 * statistics.median(r["latency_s"] for r in rows) if llm else None,
                train_seconds_ci=mean_ci([r["train_seconds"] for r in rows])[1],
                macro_f1=_mean_of(rows, "macro_f1"),
                epsilon=_mean_of(rows, "epsilon"),
                target_epsilon=first.get("target_epsilon"),
                missing=missing,
                metrics=metrics,
            )
        )
    return out


HEADER = (
    "| variant | accuracy (mean ± 95 % CI) | per seed | trainable params | image tokens (in text) "
    "| training samples | train time | latency / sample |"
)


def classifier_table(rows: Sequence[VariantSummary]) -> str:
    """Classifier sweeps: accuracy, macro F1, size, training time, ε (with privacy), and the accuracy with
    each modality dropped (late fusion drops its vote; see omnifuse.tasks.classify.evaluation)."""
    modalities = sorted({m for s in rows for m in (s.missing or {})})
    private = any(s.target_epsilon is not None for s in rows)
    head = ["variant", "accuracy (mean ± 95 % CI)", "per seed", "macro F1", "trainable params", "train time"]
    head += ["ε spent (target)"] if private else []
    head += [f"{m} missing" for m in modalities]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        cells = [
            s.variant,
            f"{100 * s.accuracy:.1f} ± {100 * s.ci:.1f} %",
            ", ".join(f"{100 * a:.1f}" for a in s.accuracies),
            f"{s.macro_f1:.3f}" if s.macro_f1 is not None else "—",
            f"{s.trainable_params:,}",
            f"{s.train_seconds:.1f} ± {s.train_seconds_ci:.1f} s",
        ]
        if private:
            cells.append(f"{s.epsilon:.2f} ({s.target_epsilon:g})" if s.epsilon is not None else "∞ (no DP)")
        cells += [f"{100 * s.missing[m]:.1f} %" if s.missing and m in s.missing else "—" for m in modalities]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def alignment_table(rows: Sequence[VariantSummary]) -> str:
    """Alignment sweeps: mean R@1 of both directions (± 95 % CI over seeds), then R@1/5/10 per direction."""
    keys = [k for k in rows[0].metrics if " " in k]  # "<direction> R@k"
    head = ["variant", "mean R@1 (± 95 % CI)", "per seed", *keys, "trainable params", "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        cells = [
            s.variant,
            f"{100 * s.accuracy:.1f} ± {100 * s.ci:.1f} %",
            ", ".join(f"{100 * a:.1f}" for a in s.accuracies),
            *(f"{100 * s.metrics[k]:.1f}" if k in s.metrics else "—" for k in keys),
            f"{s.trainable_params:,}",
            f"{s.train_seconds:.1f} ± {s.train_seconds_ci:.1f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: Sequence[VariantSummary]) -> str:
    if rows and all(s.alignment for s in rows):
        return alignment_table(rows)
    if rows and all(s.classifier for s in rows):
        return classifier_table(rows)
    lines = [HEADER, "|" + "---|" * 8]
    for s in rows:
        seeds = ", ".join(f"{100 * a:.1f}" for a in s.accuracies)
        lines.append(
            f"| {s.variant} | {100 * s.accuracy:.1f} ± {100 * s.ci:.1f} % | {seeds} | {s.trainable_params:,} "
            f"| {s.image_tokens} ({s.text_tokens_per_image}) | {s.training_samples:,} | {s.train_seconds:.0f} s "
            f"| {s.latency_ms:.0f} ms |"
        )
    return "\n".join(lines)


def _score_label(rows: Sequence[VariantSummary]) -> str:
    return "mean R@1" if rows and all(s.alignment for s in rows) else "accuracy"


def _plot(rows: Sequence[VariantSummary], x_of, xlabel: str, path: Path, log_x: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s in rows:  # a legend rather than labels at the points: close variants would overlap
        ax.errorbar(x_of(s), 100 * s.accuracy, yerr=100 * s.ci, fmt="o", capsize=4, label=s.variant)
    ax.legend(fontsize=8, loc="best")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels (3×10⁶, 4×10⁶, …) collide
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{_score_label(rows)} (%), mean ± 95 % CI over seeds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _plot_epsilon(rows: Sequence[VariantSummary], path: Path) -> bool:
    """Accuracy against the privacy budget ε (log axis); runs without DP at the right end, marked ∞."""
    private = sorted((s for s in rows if s.target_epsilon is not None), key=lambda s: s.target_epsilon)
    if not private:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [s.target_epsilon for s in private]
    ax.errorbar(xs, [100 * s.accuracy for s in private], yerr=[100 * s.ci for s in private], fmt="o-",
                capsize=4, label="DP-SGD")  # fmt: skip
    ticks, labels = list(xs), [f"{x:g}" for x in xs]
    for s in rows:
        if s.target_epsilon is None:
            x_inf = 2 * max(xs)
            ax.errorbar(
                [x_inf],
                [100 * s.accuracy],
                yerr=[100 * s.ci],
                fmt="s",
                capsize=4,
                label=f"{s.variant} (no DP)",
            )
            ticks.append(x_inf)
            labels.append("∞")
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("privacy budget ε (target; δ fixed)")
    ax.set_ylabel("accuracy (%), mean ± 95 % CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return True


def paired_table(records: Sequence[dict], rows: Sequence[VariantSummary]) -> str:
    if len(rows) < 2:
        return ""
    by = {s.variant: {r["seed"]: r["accuracy"] for r in records if r["variant"] == s.variant} for s in rows}
    ref = rows[0].variant
    lines = [
        f"Paired differences against `{ref}` (same seeds; mean ± 95 % CI of the per-seed differences):",
        "",
        "| variant | accuracy − " + ref + " | better on |",
        "|---|---|---|",
    ]
    for s in rows[1:]:
        diff = paired_difference(by[s.variant], by[ref])
        if diff is not None:
            mean, half, wins, n = diff
            lines.append(
                f"| {s.variant} | {100 * mean:+.1f} ± {100 * half:.1f} points | {wins} of {n} seeds |"
            )
    return "\n".join(lines) + "\n\n"


def write_report(out: Path, name: str, records: Sequence[dict], command: str) -> list[VariantSummary]:
    rows = summarize(records)
    _plot(rows, lambda s: s.trainable_params, "trainable parameters", out / "accuracy_vs_params.png", True)
    _plot(rows, lambda s: s.train_seconds, "training time per run (s)", out / "accuracy_vs_time.png", False)
    epsilon_plot = _plot_epsilon(rows, out / "accuracy_vs_epsilon.png")
    summary = {"sweep": name, "variants": [asdict(s) for s in rows]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    seeds = sorted({r["seed"] for r in records})
    if rows and all(s.alignment for s in rows):
        explained = (
            "Alignment runs on cached frozen-encoder features; the score is the mean R@1 of both retrieval "
            "directions (DeViSE: zero-shot accuracy among all classes), R@k columns are means over seeds, "
            "trainable parameters are the method's learned numbers."
        )
    elif rows and all(s.classifier for s in rows):
        explained = (
            "Classifier runs on cached frozen-encoder features: trainable parameters are the fusion head's, "
            "train time is the head's training (the features are extracted once and shared by all variants). "
            "Missing columns: accuracy with that modality dropped at test time (mean over seeds)."
        )
    else:
        explained = (
            "Trainable parameters are those training changed (what `model.safetensors` holds). Image tokens: "
            "tokens the connector makes per image (of which in the LLM's text, in brackets: 0 for "
            "cross-attention). Latency: median time to answer one question alone (batch 1, greedy)."
        )
    text = (
        f"# Sweep `{name}`\n\n"
        f"Command: `{command}`\n\n"
        f"Seeds {seeds}; every variant trained and evaluated once per seed on the same data. The interval is "
        "the Student-t 95 % confidence interval of the mean over seeds (seed-to-seed variation: data order and "
        f"initialisation). {explained}\n\n"
        f"{markdown_table(rows)}\n\n"
        f"{paired_table(records, rows)}"
        "![accuracy vs trainable parameters](accuracy_vs_params.png)\n"
        "![accuracy vs training time](accuracy_vs_time.png)\n"
        + ("![accuracy vs privacy budget](accuracy_vs_epsilon.png)\n" if epsilon_plot else "")
    )
    atomic_write_text(out / "report.md", text)
    return rows
