"""Baselines on shapes-grounding that never look at the image: what Acc@0.5 / mean IoU a model gets from
the text alone (docs/grounding.md). Scored by the same code as ``omnifuse eval`` (eval.scoring).

    .venv/bin/python benchmarks/grounding_baselines.py [--limit 200]

* constant box: every referring expression answered with the mean training box of its shape size word
  (small / large, read from the phrase when it holds one, else the mean of all boxes);
* a random shape of the scene: one of the scene's exact boxes (from its grounded caption), drawn with a
  fixed seed — localisation solved, the referring expression ignored;
* perfect: the reference itself (checks that the scorer gives 100 %).
"""

from __future__ import annotations

import argparse
import random
import time

from omnifuse.assets import cache_dir
from omnifuse.data.boxes import Box, first_box, format_box, parse_grounding
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import select_subset
from omnifuse.data.shapes_grounding import ensure_shapes_grounding
from omnifuse.eval.grounding import grounding_table, summarise_grounding
from omnifuse.eval.scoring import metric_for


def mean_box(boxes: list[Box]) -> Box:
    n = len(boxes)
    return Box(*(round(sum(getattr(b, k) for b in boxes) / n) for k in ("x1", "y1", "x2", "y2")))


def size_word(sample) -> str:
    phrase = sample.meta.get("phrase", "")
    return next((w for w in ("small", "large") if w in phrase.split()), "any")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="the eval subset (seed 0), as the recipe's")
    args = parser.parse_args()
    t0 = time.perf_counter()
    files = ensure_shapes_grounding(cache_dir(), progress=False)
    train = [s for s in load_jsonl(files["train"]) if s.meta.get("task") == "grounding"]
    test = select_subset(load_jsonl(files["test"]), args.limit, 0)
    boxes: dict[str, list[Box]] = {"any": []}
    for s in train:
        boxes.setdefault(size_word(s), []).append(first_box(s.answer()))
        boxes["any"].append(first_box(s.answer()))
    means = {k: mean_box(v) for k, v in boxes.items()}
    everything = load_jsonl(files["test"])
    scene_boxes = {
        s.meta["scene"]: [b for g in parse_grounding(s.answer()) for b in g.boxes]
        for s in everything
        if s.meta.get("task") == "grounded_caption"
    }
    rng = random.Random(0)
    grounded = [s for s in test if metric_for(s) is not None and s.meta.get("task") == "grounding"]
    for name, answer in [
        ("constant box (mean train box per size word)", lambda s: format_box(means[size_word(s)])),
        ("a random shape of the scene", lambda s: format_box(rng.choice(scene_boxes[s.meta["scene"]]))),
        ("perfect (the reference)", lambda s: s.answer()),
    ]:
        records = [{"question_type": "grounding", **metric_for(s).score(answer(s), s)} for s in grounded]
        _, columns, rows = grounding_table(summarise_grounding(records))
        print(f"{name}: " + " | ".join(f"{c} {v}" for c, v in zip(columns[1:], rows[0][1:], strict=True)))
    print(
        f"{len(grounded)} referring expressions of {len(test)} eval samples; {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
