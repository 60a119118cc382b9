"""What the verbs print: the rich tables and summary lines, apart from the verbs that compute them.

Results go to ``console.out`` (stdout); the sweep plan, which comes before long work, to ``console.err``.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from omnifuse.cli import console


def score(accuracy: float, ci=None) -> str:
    """``85.7 % [83.5, 87.8]``: the accuracy and its 95 % interval, in percent."""
    text = f"{100 * accuracy:.1f} %"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def table_of(data) -> Table:
    """A task's :class:`omnifuse.tasks.base.TableData` as a rich table (its text is never markup)."""
    table = Table(title=escape(data.title))
    for k, col in enumerate(data.columns):
        table.add_column(escape(col), justify="left" if k in data.left else "right")
    for row in data.rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def print_printout(printout) -> None:
    """What a task hands back to show: lines of plain text and tables, in order."""
    for item in printout:
        console.out.print(escape(item) if isinstance(item, str) else table_of(item))


def print_scores(outcome) -> None:
    from omnifuse.tasks.generate.printout import score_table

    print_printout(score_table(outcome))


def print_comparison(c, run_a: Path, run_b: Path, task) -> None:
    """``task``'s labels: the per-sample score (accuracy, R@1) and its groups (question type, class,
    direction)."""
    table = Table(title=f"A = {escape(str(run_a))}, B = {escape(str(run_b))} (paired, same samples)")
    table.add_column(task.group_name)
    for col in (
        "n",
        f"{task.score_name} A",
        f"{task.score_name} B",
        "B − A, points [95 % CI]",
        "p",
        "only A right",
        "only B right",
    ):
        table.add_column(col, justify="right", no_wrap=col.startswith("B − A"))
    for name, v in [("all", c.overall), *c.per_type.items()]:
        table.add_row(
            name,
            str(v.n),
            score(v.mean_a),
            score(v.mean_b),
            f"{100 * v.difference:+.1f} [{100 * v.ci[0]:+.1f}, {100 * v.ci[1]:+.1f}]",
            "< 0.001" if v.p_value < 0.001 else f"{v.p_value:.3f}",
            "—" if v.only_a is None else str(v.only_a),
            "—" if v.only_b is None else str(v.only_b),
        )
    console.out.print(table)
    console.out.print(
        "p: two-sided paired permutation test (sign flips of the per-sample differences); "
        "only A / B right: samples (questions, queries) one run gets right and the other wrong"
    )


def print_explanation(expl, obj: dict, folder: Path) -> None:
    tokens = " ".join(repr(t) for t in expl.target_tokens)
    console.out.print(f"question: {escape(expl.question)}")
    console.out.print(
        f"answer{' (given)' if expl.answer_given else ''}: {escape(expl.answer)}   explained token(s): {escape(tokens)}"
    )
    if expl.contributions:
        table = Table(title="modality contribution: log p(answer tokens)")
        for col in ("condition", "log p", "p", "top first token"):
            table.add_column(col, justify="left" if col in ("condition", "top first token") else "right")
        base = expl.contributions[0].log_prob
        for c in expl.contributions:
            delta = "" if c is expl.contributions[0] else f" ({c.log_prob - base:+.2f})"
            table.add_row(
                c.condition,
                f"{c.log_prob:.3f}{delta}",
                f"{math.exp(c.log_prob):.3f}",
                escape(repr(c.top_token)),
            )
        console.out.print(table)
    att = obj["attention"]
    if "skipped" in att:
        console.out.print(f"attention: skipped ({escape(att['skipped'])})")
    else:
        masses = ", ".join(f"{m:.3f}" for m in att["mass_per_image_token"][:32])
        more = " …" if len(att["mass_per_image_token"]) > 32 else ""
        console.out.print(
            f"attention to the image: {100 * att['image_share']:.1f} % of the answer's attention "
            f"(layers {escape(span(att['layers']))}); per image token: {masses}{more}"
        )
        if att["heatmap_skipped"]:
            console.out.print(f"attention heatmap: skipped, {escape(att['heatmap_skipped'])}")
    grad = obj["gradient_x_input"]
    if "skipped" in grad:
        console.out.print(f"gradient × input: skipped ({escape(grad['skipped'])})")
    if expl.perturbations:
        console.out.print(perturbation_table(expl.perturbations))
    lens = Table(title=f"logit lens for {expl.target_tokens[0]!r}")
    for col in ("layer", "p(answer)", "rank", "top token", "p(top)"):
        lens.add_column(col, justify="right" if col != "top token" else "left")
    for e in expl.lens.layers:
        lens.add_row(
            str(e.layer),
            f"{e.prob[0]:.4f}",
            str(e.rank[0]),
            escape(repr(e.top_token[0])),
            f"{e.top_prob[0]:.4f}",
        )
    console.out.print(lens)
    files = ", ".join(str(folder / f) for f in ["explain.json", *[v for v in obj["files"].values() if v]])
    console.out.print(f"written: {escape(files)}")


def perturbation_table(results: dict) -> Table:
    """One row per perturbation method: the sums per modality (nats of log p(answer)), the share of
    |attribution| on the image, the strongest region and question token."""
    table = Table(title="perturbation attributions of log p(answer) (nats; + for the answer, − against)")
    cols = ("method", "evaluations", "image Σ", "question Σ", "log p − log p(baseline)", "image share of Σ|·|",
            "top region", "top question token", "time")  # fmt: skip
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("method", "top region", "top question token") else "right"
        )
    for method, r in results.items():
        k = int(r.region_values.argmax())
        where = (
            f"row {k // r.regions.grid[1]}, col {k % r.regions.grid[1]}"
            if r.regions.grid
            else f"superpixel {k}"
        )
        top_token = max(zip(r.token_values, r.tokens, strict=True), default=None)
        table.add_row(
            method,
            str(r.evaluations),
            f"{r.image_total:+.3f}",
            f"{r.question_total:+.3f}",
            f"{r.full_log_prob - r.baseline_log_prob:+.3f}",
            f"{100 * r.image_abs_share():.1f} %",
            f"{where} ({r.region_values[k]:+.3f})",
            "—" if top_token is None else f"{escape(repr(top_token[1]))} ({top_token[0]:+.3f})",
            f"{r.seconds:.1f} s",
        )
    return table


def print_classifier_explanation(results: dict, obj: dict, folder: Path) -> None:
    """The predicted class, then per method the sum of each modality's attributions (nats of log p)."""
    first = next(iter(results.values()))
    probs = ", ".join(
        f"{escape(c)} {p:.3f}" for c, p in sorted(first.class_probs.items(), key=lambda kv: -kv[1])[:5]
    )
    console.out.print(f"class: {escape(first.target)} (log p {first.log_prob:.3f}); top classes: {probs}")
    mods = [m.modality for m in first.modalities]
    table = Table(
        title=f"attributions of log p({escape(first.target)!r}) per modality (nats; + for, − against)"
    )
    for col in ("method", "evaluations", *[f"{m} Σ" for m in mods], "log p − log p(baseline)",
                *[f"{m} share of Σ|·|" for m in mods], "time"):  # fmt: skip
        table.add_column(escape(col), justify="left" if col == "method" else "right")
    for method, r in results.items():
        shares = r.abs_shares()
        table.add_row(method, str(r.evaluations), *[f"{m.total:+.3f}" for m in r.modalities],
                      f"{r.log_prob - r.baseline_log_prob:+.3f}", *[f"{100 * shares[m]:.1f} %" for m in mods],
                      f"{r.seconds:.1f} s")  # fmt: skip
    console.out.print(table)
    files = ", ".join(str(folder / f) for f in ["explain.json", *obj["files"].values()])
    console.out.print(f"written: {escape(files)}")


def span(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


def print_sweep_plan(sw, counts: dict[str, int]) -> None:
    from omnifuse.tasks import task_for

    table = Table(title=f"sweep {sw.spec.name}: {len(sw.variants)} variants × seeds {sw.spec.seeds}")
    for col in ("variant", "stages", "training samples"):
        table.add_column(col)
    for v in sw.variants:
        table.add_row(v.name, escape(task_for(v.recipe).plan(v.recipe)), f"{counts[v.name]:,}")
    console.err.print(table)


def print_sweep_results(sw, rows, folder: Path) -> None:
    """Variant, the task's score (mean ± 95 % CI), trainable parameters, then the task's own columns."""
    from dataclasses import asdict

    from omnifuse.sweep import sweep_task

    task = sweep_task(sw)
    result = Table(title=f"sweep {sw.spec.name} (mean ± 95 % CI over {len(sw.spec.seeds)} seeds)")
    for col in ["variant", task.score_name, "trainable", *(c.header for c in task.sweep_columns)]:
        result.add_column(col, justify="right" if col != "variant" else "left")
    for r in rows:
        cells = [r.variant, f"{100 * r.accuracy:.1f} ± {100 * r.ci:.1f} %", f"{r.trainable_params:,}"]
        summary = asdict(r)
        result.add_row(*cells, *(c.cell(summary) for c in task.sweep_columns))
    console.out.print(result)
    console.out.print(f"report: {folder / 'report.md'}")


def print_shipped_recipes(rows: list[tuple[str, str, str]], folder: Path) -> None:
    table = Table(title=f"shipped recipes ({escape(str(folder))}); start from one: omnifuse cp NAME DEST")
    name_width = max(len(name) for name, _, _ in rows)
    table.add_column("name", no_wrap=True, min_width=name_width)
    table.add_column("task", no_wrap=True, min_width=8)
    room = max(20, console.out.width - name_width - 8 - 10)  # what the borders and padding leave
    table.add_column("what it is", no_wrap=True, overflow="ellipsis", max_width=room)
    for name, task, summary in rows:
        table.add_row(name, task, escape(summary))
    console.out.print(table)


def print_quickstart(result) -> None:
    """The quickstart's scores, its summary table (accuracy, times, memory), the report and the chat examples."""
    outcome = result.outcome
    print_scores(outcome)
    summary = Table(title="quickstart")
    summary.add_column("")
    summary.add_column("", justify="right")
    summary.add_row("accuracy", f"{100 * outcome.result.accuracy:.1f} % (n={outcome.result.n})")
    if outcome.blind:
        summary.add_row("blind baseline", f"{100 * outcome.blind.accuracy:.1f} %")
    for k, v in result.times.items():
        summary.add_row(k, f"{v:.1f} s")
    summary.add_row("training + evaluation", f"{result.train_and_eval_seconds:.1f} s")
    summary.add_row("peak memory (RSS)", f"{result.peak_rss_gb:.2f} GB")
    console.out.print(summary)
    console.out.print(
        f"report: {result.report} (one page: scores, stages, curves, samples, heatmaps) and "
        f"{result.run_dir / 'report.md'}"
    )
    console.out.print("\nchat example:")
    for q, answer in result.chat:
        console.out.print(f"  $ omnifuse chat {result.run_dir} --image {result.image} {q!r}")
        console.out.print(f"  {answer}")
