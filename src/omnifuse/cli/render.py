"""What the verbs print: the rich tables and summary lines, apart from the verbs that compute them.

Results go to ``console.out`` (stdout); the sweep plan, which comes before long work, to ``console.err``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from omnifuse.cli import console


def score(accuracy: float, ci=None) -> str:
    """``85.7 % [83.5, 87.8]``: the accuracy and its 95 % interval, in percent."""
    text = f"{100 * accuracy:.1f} %"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def print_classifier(run_dir: Path) -> None:
    result = json.loads((run_dir / "eval.json").read_text())
    lo, hi = result["accuracy_ci95"]
    line = (
        f"{result['fusion']} fusion: accuracy {score(result['accuracy'], (lo, hi))}, macro F1 "
        f"{result['macro_f1']:.3f} on {result['n']} samples; {result['trainable_params']:,} trainable parameters"
    )
    if "privacy" in result:
        p = result["privacy"]
        line += f"; DP-SGD spent ε = {p['epsilon']:.2f} (target {p['target_epsilon']}, δ = {p['delta']:g})"
    console.out.print(line)
    rob_file = run_dir / "robustness.json"
    if rob_file.is_file():
        rob = json.loads(rob_file.read_text())
        table = Table(title="robustness (accuracy)")
        table.add_column("condition")
        table.add_column("accuracy", justify="right")
        table.add_row("clean", f"{100 * rob['clean']:.1f} %")
        for m, v in rob["missing"].items():
            table.add_row(
                f"{m} missing (zeroed / dropped)", f"{100 * v['zeroed']:.1f} / {100 * v['dropped']:.1f} %"
            )
        for std, row in rob["noise"].items():
            for target, acc in row.items():
                table.add_row(f"noise σ={std} on {target}", f"{100 * acc:.1f} %")
        console.out.print(table)
    console.out.print(f"run directory: {run_dir}  report: {run_dir / 'report.md'}")


def print_probes(outcome) -> None:
    table = Table(title="robustness probes (same questions, changed inputs)")
    for col in ("probe", "accuracy", "answers changed"):
        table.add_column(col, justify="left" if col == "probe" else "right")
    table.add_row("clean", f"{100 * outcome.result.accuracy:.1f} %", "–")
    for row in outcome.probes:
        table.add_row(row.probe, f"{100 * row.result.accuracy:.1f} %", f"{100 * row.changed:.1f} %")
    console.out.print(table)


def print_reproduction(rep) -> None:
    if rep.same:
        console.out.print(f"[green]reproduced[/green]: the scores equal those recorded in {rep.manifest}")
    else:
        console.out.print(f"[yellow]not reproduced[/yellow]: recorded {rep.then}, now {rep.now}")
    for name, (then, now) in rep.drift.items():
        console.out.print(f"  {name} was {then} when recorded, is {now} now")


def print_scores(outcome) -> None:
    table = Table(title=f"evaluation on {outcome.data} (accuracy [95 % bootstrap CI])")
    table.add_column("question type")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    if outcome.blind:
        table.add_column("blind", justify="right")
    r = outcome.result
    rows = [("all", {"n": r.n, "accuracy": r.accuracy, "ci95": r.ci95})]
    rows += list(r.per_type.items())
    for name, v in rows:
        cells = [name, str(v["n"]), score(v["accuracy"], v.get("ci95"))]
        if outcome.blind:
            b = outcome.blind
            bv = {"accuracy": b.accuracy, "ci95": b.ci95} if name == "all" else b.per_type[name]
            cells.append(score(bv["accuracy"], bv.get("ci95")))
        table.add_row(*cells)
    console.out.print(table)
    if r.asr is not None:
        console.out.print(
            f"ASR cascade: word error rate {100 * r.asr['wer']:.1f} % over {r.asr['n']} spoken questions, "
            f"{100 * r.asr['exact']:.1f} % heard exactly (predictions.jsonl: 'heard')"
        )


def print_comparison(c, run_a: Path, run_b: Path) -> None:
    table = Table(title=f"A = {escape(str(run_a))}, B = {escape(str(run_b))} (paired, same samples)")
    table.add_column("question type")
    for col in (
        "n",
        "accuracy A",
        "accuracy B",
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
        "only A / B right: questions one run gets right and the other wrong"
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


def span(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


def print_sweep_plan(sw, counts: dict[str, int]) -> None:
    from omnifuse.recipe import ClassifierRecipe

    table = Table(title=f"sweep {sw.spec.name}: {len(sw.variants)} variants × seeds {sw.spec.seeds}")
    for col in ("variant", "stages", "training samples"):
        table.add_column(col)
    for v in sw.variants:
        if isinstance(v.recipe, ClassifierRecipe):
            what = f"{v.recipe.train.epochs} epochs"
        else:
            what = " → ".join(s.name for s in v.recipe.stages)
        table.add_row(v.name, what, f"{counts[v.name]:,}")
    console.err.print(table)


def print_sweep_results(sw, rows, folder: Path) -> None:
    result = Table(title=f"sweep {sw.spec.name} (mean ± 95 % CI over {len(sw.spec.seeds)} seeds)")
    classifier = all(r.classifier for r in rows)
    cols = ["variant", "accuracy", "trainable", "train s"]
    cols += ["macro F1", "ε"] if classifier else ["image tokens", "latency ms"]
    for col in cols:
        result.add_column(col, justify="right" if col != "variant" else "left")
    for r in rows:
        cells = [r.variant, f"{100 * r.accuracy:.1f} ± {100 * r.ci:.1f} %", f"{r.trainable_params:,}"]
        cells.append(f"{r.train_seconds:.1f}" if classifier else f"{r.train_seconds:.0f}")
        if classifier:
            cells += [f"{r.macro_f1:.3f}", "—" if r.epsilon is None else f"{r.epsilon:.2f}"]
        else:
            cells += [str(r.image_tokens), f"{r.latency_ms:.0f}"]
        result.add_row(*cells)
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
