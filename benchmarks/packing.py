"""Packing (runtime.packing): padding fraction before / after, and the quickstart's step time packed vs padded.

1. Padding fraction: the share of token slots that hold padding when micro-batches of 8 (the quickstart's
   batch) are padded to their longest sample, packed into rows no longer than that (``packing: true``,
   the default ``packing_length``), and packed into one row (``packing_length`` ≥ the micro-batch's
   tokens). On easy-vqa:train (the quickstart's stage order: seeded and balanced by question type) and on
   a LLaVA-format file written here from easy-vqa (each image's questions as one multi-turn conversation
   of 1-6 turns, as in LLaVA-Instruct) and converted with ``omnifuse data convert llava``. Token counts
   with the quickstart's processor (1 image token) and the llava recipe's (16 image tokens).
2. Step time: the quickstart's instruct stage (MobileNetV2 → pool connector → SmolLM2-135M with LoRA);
   one step = encode + collate + forward + backward + AdamW, exactly the loop's step function
   (``generative_step`` / ``packed_generative_step``), on the same micro-batches, the variants
   alternating round by round; medians and ratios against the padded step. One torch thread.

    .venv/bin/python benchmarks/packing.py [--batches 8] [--rounds 2] [--samples 800] [--timing both]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from omnifuse.cli import main as cli
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sources import load_data
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage
from omnifuse.processing.packing import padding_fraction
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR
from omnifuse.training.objectives import generative_step, packed_generative_step
from omnifuse.training.order import stage_order

BATCH = 8
# name → packing_length: "padded" is no packing; 1 = rows no longer than the longest sample; None = one row
PADDED = "padded"
VARIANTS: dict[str, int | str | None] = {"padded": PADDED, "rows<=longest": 1, "one row": None}


def llava_file(folder: Path, limit: int) -> Path:
    """A LLaVA-format JSON from easy-vqa: one conversation per image, its questions as turns."""
    from easy_vqa import get_train_image_paths, get_train_questions

    questions, answers, image_ids = get_train_questions()
    paths = get_train_image_paths()
    by_image: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for q, a, i in zip(questions, answers, image_ids, strict=True):
        by_image[i].append((q, a))
    rng = random.Random(0)
    records = []
    for i in sorted(by_image)[:limit]:
        turns = by_image[i][: rng.randint(1, 6)]
        conv = []
        for k, (q, a) in enumerate(turns):
            conv.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + q})
            conv.append({"from": "gpt", "value": a.capitalize() + "."})
        records.append({"id": str(i), "image": paths[i], "conversations": conv})
    src = folder / "llava.json"
    src.write_text(json.dumps(records))
    out = folder / "llava.jsonl"
    if cli(["data", "convert", "llava", str(src), "--out", str(out)]) not in (0, None):
        raise SystemExit("omnifuse data convert llava failed")
    return out


def padding_table(samples_by_data: dict, recipes: dict) -> None:
    print(f"\npadding fraction, micro-batches of {BATCH} (share of token slots that are padding)")
    print(f"{'data':<28} {'processor':<11} {'tokens/sample':>13} " + " ".join(f"{v:>8}" for v in VARIANTS))
    for name, samples in samples_by_data.items():
        for rname, proc in recipes.items():
            lengths = [len(proc.encode(s).input_ids) for s in samples]
            fr = {
                v: padding_fraction(lengths, BATCH, packed=b != PADDED, budget=None if b == PADDED else b)
                for v, b in VARIANTS.items()
            }
            mean = sum(lengths) / len(lengths)
            cells = " ".join(f"{100 * f:12.1f}%" for f in fr.values())
            print(f"{name:<28} {rname:<11} {mean:13.1f} {cells}   ({min(lengths)}-{max(lengths)} tokens)")


def step_times(recipe, name: str, samples, batches: int, rounds: int) -> None:
    torch.manual_seed(0)
    model, proc = build_model(recipe.model, progress=False)
    stage = recipe.stages[-1]
    opt = torch.optim.AdamW(apply_stage(model, stage, recipe.lora))
    model.train()
    model.encoders.eval()
    micro = [samples[i * BATCH : (i + 1) * BATCH] for i in range(batches + 1)]

    def run(variant: str, batch) -> tuple[float, float]:
        budget = VARIANTS[variant]
        t0 = time.perf_counter()
        out = _step(model, proc, batch, stage, budget)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0, float(out.loss.detach())

    with torch.no_grad():  # the same loss, packed or not (before any update)
        first = {v: float(_step(model, proc, micro[0], stage, b).loss) for v, b in VARIANTS.items()}
    print(
        f"\nloss of one micro-batch: {first} (max difference {max(first.values()) - min(first.values()):.2e})"
    )
    for v in VARIANTS:  # warm-up
        run(v, micro[0])
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for batch in micro[1:]:
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for v in order:
                times[v].append(run(v, batch)[0])
    ref = statistics.median(times["padded"])
    print(f"step time on {name}, quickstart instruct stage, {batches} micro-batches × {rounds} rounds:")
    for v, ts in times.items():
        med = statistics.median(ts)
        print(f"  {v:<14} median {med:.3f} s/step   ratio to padded {med / ref:.3f}")


def _step(model, proc, batch, stage, budget):
    if budget == PADDED:
        return generative_step(model, proc, batch, stage)
    return packed_generative_step(model, proc, batch, stage, budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=8, help="micro-batches timed per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=800, help="samples per data set for the padding table")
    ap.add_argument("--timing", choices=["both", "easy-vqa", "llava", "none"], default="both")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quick = load_recipe(RECIPES_DIR / "quickstart.yaml")
    llava = load_recipe(RECIPES_DIR / "llava.yaml")
    train = load_data("easy-vqa:train")
    order, _ = stage_order(quick.stages[-1], len(quick.stages) - 1, quick.seed, [train], 1)
    ordered = [train[order(i)] for i in range(max(args.samples, (args.batches + 1) * BATCH))]
    with tempfile.TemporaryDirectory() as tmp:
        converted = load_jsonl(llava_file(Path(tmp), args.samples))
        procs = {"quickstart": build_model(quick.model, progress=False)[1]}
        procs["llava"] = build_model(llava.model, progress=False)[1]
        data = {
            "easy-vqa:train (stage order)": ordered[: args.samples],
            "LLaVA-format (converted)": converted,
        }
        padding_table(data, procs)
    if args.timing in ("both", "easy-vqa"):
        step_times(quick, "easy-vqa:train", ordered, args.batches, args.rounds)
    if args.timing in ("both", "llava"):
        step_times(quick, "LLaVA-format", converted, args.batches, args.rounds)


if __name__ == "__main__":
    main()
