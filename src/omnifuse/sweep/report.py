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
    variant: str
    seeds: int
    accuracy: float
    ci: float
    accuracies: list[float]
    trainable_params: int
    image_tokens: int
    text_tokens_per_image: int
    training_samples: int
    train_seconds: float
    latency_ms: float


def summarize(records: Sequence[dict]) -> list[VariantSummary]:
    by_variant: dict[str, list[dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    out = []
    for name, rows in by_variant.items():
        acc = [r["accuracy"] for r in rows]
        mean, ci = mean_ci(acc)
        out.append(
            VariantSummary(
                variant=name,
                seeds=len(rows),
                accuracy=mean,
                ci=ci,
                accuracies=acc,
                trainable_params=rows[0]["trainable_params"],
                image_tokens=sum(rows[0]["image_tokens"].values()),
                text_tokens_per_image=sum(rows[0]["text_tokens_per_image"].values()),
                training_samples=rows[0]["training_samples"],
                train_seconds=statistics.fmean(r["train_seconds"] for r in rows),
                latency_ms=1000 * statistics.median(r["latency_s"] for r in rows),
            )
        )
    return out


HEADER = (
    "| variant | accuracy (mean ± 95 % CI) | per seed | trainable params | image tokens (in text) "
    "| training samples | train time | latency / sample |"
)


def markdown_table(rows: Sequence[VariantSummary]) -> str:
    lines = [HEADER, "|" + "---|" * 8]
    for s in rows:
        seeds = ", ".join(f"{100 * a:.1f}" for a in s.accuracies)
        lines.append(
            f"| {s.variant} | {100 * s.accuracy:.1f} ± {100 * s.ci:.1f} % | {seeds} | {s.trainable_params:,} "
            f"| {s.image_tokens} ({s.text_tokens_per_image}) | {s.training_samples:,} | {s.train_seconds:.0f} s "
            f"| {s.latency_ms:.0f} ms |"
        )
    return "\n".join(lines)


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
    ax.set_ylabel("accuracy (%), mean ± 95 % CI over seeds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


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
    summary = {"sweep": name, "variants": [asdict(s) for s in rows]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    seeds = sorted({r["seed"] for r in records})
    text = (
        f"# Sweep `{name}`\n\n"
        f"Command: `{command}`\n\n"
        f"Seeds {seeds}; every variant trained and evaluated once per seed on the same data. The interval is "
        "the Student-t 95 % confidence interval of the mean over seeds (seed-to-seed variation: data order and "
        "initialisation). Trainable parameters are those training changed (what `model.safetensors` holds). "
        "Image tokens: tokens the connector makes per image (of which in the LLM's text, in brackets: 0 for "
        "cross-attention). Latency: median time to answer one question alone (batch 1, greedy).\n\n"
        f"{markdown_table(rows)}\n\n"
        f"{paired_table(records, rows)}"
        "![accuracy vs trainable parameters](accuracy_vs_params.png)\n"
        "![accuracy vs training time](accuracy_vs_time.png)\n"
    )
    atomic_write_text(out / "report.md", text)
    return rows
