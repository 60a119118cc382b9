"""What ``train`` and ``eval`` of a generate run print, as plain data (the CLI renders it)."""

from __future__ import annotations

from omnifuse.eval.captioning import caption_table
from omnifuse.eval.scoring import metric_tables
from omnifuse.tasks.base import Printout, TableData, percent


def score_table(outcome) -> Printout:
    """Accuracy [95 % CI] overall and per question type (and the blind baseline), then the ASR line."""
    columns = ["question type", "n", "accuracy"] + (["blind"] if outcome.blind else [])
    r = outcome.result
    rows = []
    for name, v in [("all", {"n": r.n, "accuracy": r.accuracy, "ci95": r.ci95}), *r.per_type.items()]:
        cells = [name, str(v["n"]), percent(v["accuracy"], v.get("ci95"))]
        if outcome.blind:
            b = outcome.blind
            bv = {"accuracy": b.accuracy, "ci95": b.ci95} if name == "all" else b.per_type[name]
            cells.append(percent(bv["accuracy"], bv.get("ci95")))
        rows.append(tuple(cells))
    title = f"evaluation on {outcome.data} (accuracy [95 % bootstrap CI])"
    printout: Printout = [TableData(title, tuple(columns), tuple(rows))]
    for metric_title, metric_columns, metric_rows in metric_tables(r.metrics or {}):  # grounding, ...
        printout.append(TableData(metric_title, metric_columns, tuple(metric_rows)))
    if r.asr is not None:
        printout.append(
            f"ASR cascade: word error rate {100 * r.asr['wer']:.1f} % over {r.asr['n']} spoken questions, "
            f"{100 * r.asr['exact']:.1f} % heard exactly (predictions.jsonl: 'heard')"
        )
    return printout


def eval_printout(outcome, run_dir) -> Printout:
    printout = score_table(outcome)
    if outcome.probes:
        rows = [("clean", f"{100 * outcome.result.accuracy:.1f} %", "–")]
        rows += [
            (p.probe, f"{100 * p.result.accuracy:.1f} %", f"{100 * p.changed:.1f} %") for p in outcome.probes
        ]
        title = "robustness probes (same questions, changed inputs)"
        printout.append(TableData(title, ("probe", "accuracy", "answers changed"), tuple(rows)))
    for stage, scores in (outcome.captions or {}).items():  # a qformer stage's held-out captions
        title, columns, rows = caption_table(scores)
        head = f"stage {stage}, {scores['decoder']} on {scores['data']} — {title}"
        printout.append(TableData(head, columns, tuple(rows)))
    rep = outcome.reproduction
    if rep is not None:
        if rep.same:
            printout.append(f"reproduced: the scores equal those recorded in {rep.manifest}")
        else:
            printout.append(f"not reproduced: recorded {rep.then}, now {rep.now}")
        printout += [
            f"  {name} was {then} when recorded, is {now} now" for name, (then, now) in rep.drift.items()
        ]
    printout.append(f"report: {run_dir / 'report.md'}  manifest: {run_dir / 'eval_manifest.json'}")
    return printout
