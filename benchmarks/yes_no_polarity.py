"""Do a run's yes/no answers use the image, or only the wording? For docs/experiments.md.

Usage: ``python benchmarks/yes_no_polarity.py RUN [RUN ...]`` on evaluated runs of easy-vqa:test (their
``predictions.jsonl``). easy-vqa asks "is there a red shape?" (positive) and "is there not a red shape?"
(negated) of a random named colour or shape, which is usually absent: the rule "positive → no, negated →
yes" answers most of them without looking. For each run this prints the yes/no accuracy, the accuracy of
that rule on the same questions, the share of the run's answers that equal the rule's, and its accuracy on
the questions where the rule is wrong (the ones only the image can answer), each with a 95 % bootstrap
interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omnifuse.data.sources import load_data
from omnifuse.eval.vqa import accuracy_ci

NEGATIONS = {"not", "no"}


def negated(question: str) -> bool:
    return bool(NEGATIONS & set(question.lower().rstrip("?").split()))


def _cell(scores: list[float]) -> str:
    acc = sum(scores) / len(scores)
    lo, hi = accuracy_ci(scores)
    return f"{100 * acc:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n {len(scores)})"


def main(runs: list[str]) -> None:
    questions = {s.id: s.prompt()[-1].text() for s in load_data("easy-vqa:test")}
    print(
        "| run | yes/no accuracy | wording rule's accuracy | answers = the rule's | accuracy where the rule is wrong |"
    )
    print("|---|---:|---:|---:|---:|")
    for run in runs:
        rows = [json.loads(line) for line in (Path(run) / "predictions.jsonl").open()]
        rows = [r for r in rows if r["question_type"] == "yes/no"]
        rule = ["yes" if negated(questions[r["id"]]) else "no" for r in rows]
        correct = [float(r["correct"]) for r in rows]
        rule_right = [float(x == r["answer"]) for x, r in zip(rule, rows, strict=True)]
        same = [float(r["prediction"].strip().lower() == x) for x, r in zip(rule, rows, strict=True)]
        hard = [c for c, ok in zip(correct, rule_right, strict=True) if not ok]
        print(f"| {run} | {_cell(correct)} | {_cell(rule_right)} | {_cell(same)} | {_cell(hard)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
