"""Accuracy on shapes-rerendered by drawing variation, for docs/experiments.md.

Usage: ``python benchmarks/rerendered_breakdown.py RUN DATA.jsonl`` after
``omnifuse eval RUN --data DATA.jsonl`` (DATA from ``omnifuse data shapes-rerendered``): joins the run's
``predictions.jsonl`` with each sample's ``meta`` and prints, per variation (background, shape size,
placement, rotation, image size), the accuracy with its 95 % bootstrap interval — over the colour and shape
questions only (the ones the image must answer; easy-vqa's yes/no questions are mostly answered from their
wording, see docs/experiments.md) and over all questions.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from omnifuse.eval.vqa import accuracy_ci

VARIATIONS = {
    "background": lambda m: m["background"]["kind"],
    "shape size": lambda m: m["size"],
    "placement": lambda m: m["placement"],
    "rotated": lambda m: "yes" if m["rotation"] else "no",
    "image size (px)": lambda m: m["image_size"],
}


def _cell(scores: list[float]) -> str:
    if not scores:
        return "–"
    low, high = accuracy_ci(scores)
    return f"{100 * sum(scores) / len(scores):.1f} % [{100 * low:.0f}, {100 * high:.0f}] (n={len(scores)})"


def main(run: Path, data: Path) -> None:
    scores = {p["id"]: p["score"] for p in map(json.loads, (run / "predictions.jsonl").open())}
    meta = {s["id"]: s["meta"] for s in map(json.loads, data.open())}
    print("| variation | value | colour + shape questions | all questions |")
    print("|---|---|---:|---:|")
    for name, key in VARIATIONS.items():
        image: dict[str, list[float]] = defaultdict(list)
        every: dict[str, list[float]] = defaultdict(list)
        for sample_id, score in scores.items():
            m = meta[sample_id]
            every[key(m)].append(score)
            if m["question_type"] != "yes/no":
                image[key(m)].append(score)
        for value in sorted(every):
            print(f"| {name} | {value} | {_cell(image[value])} | {_cell(every[value])} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
