"""Utility against ε for DP-SGD on the quickstart (real MobileNetV2 + SmolLM2-135M), at a reduced budget.

Trains the quickstart once without DP (ε = ∞) and once per ε with ``privacy: {target_epsilon: ε}``, all
with the same settings otherwise (``--set`` below: a seeded training subset, fewer steps, no
``balance_by``, which DP-SGD refuses), evaluates each (`omnifuse eval`) on the same seeded test subset, and prints a
markdown table (accuracy with a Wilson 95 % interval, the ε spent, the noise multiplier). Run
directories go to ``--out`` (``runs/privacy`` by default); an existing finished run is reused.

    .venv/bin/python benchmarks/privacy_utility.py --epsilons 1 4 8 --out runs/privacy

Larger expected batches (what DP-SGD needs to learn; docs/privacy.md): ``--limit 0 --batch-size 16
--grad-accum 8 --steps 6 18`` (expected batch 128 from the whole split).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

RECIPE = "src/omnifuse/recipes/quickstart.yaml"


def settings(
    limit: int, steps: tuple[int, int], eval_limit: int, batch: int = 8, accum: int = 1
) -> list[str]:
    """The overrides every run shares; ``limit`` 0 trains on the whole training split."""
    per_stage = [
        f"stages.{i}.{k}={v}" for i in (0, 1) for k, v in (("batch_size", batch), ("grad_accum", accum))
    ]
    return [
        *([f"stages.0.limit={limit}", f"stages.1.limit={limit}"] if limit else []),
        *per_stage,
        f"stages.0.steps={steps[0]}",
        f"stages.1.steps={steps[1]}",
        f"stages.0.warmup={max(1, steps[0] // 3)}",
        f"stages.1.warmup={max(1, steps[1] // 6)}",
        "stages.0.balance_by=null",
        "stages.1.balance_by=null",
        f"data.eval_limit={eval_limit}",
        "eval.blind=false",
    ]


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def train(out: Path, overrides: list[str]) -> None:
    if (out / "eval.json").is_file():
        return
    cmd = [sys.executable, "-m", "omnifuse", "train", RECIPE, "--out", str(out), "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    ev = [sys.executable, "-m", "omnifuse", "eval", str(out), "--no-progress"]  # data.eval_limit of the run
    subprocess.run(ev, check=True)


def row(label: str, out: Path) -> str:
    """A table row; the time is the sum of the logged step times (training only, not loading or eval)."""
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    seconds = sum(r["seconds"] for r in steps)
    ev = json.loads((out / "eval.json").read_text())
    acc, n = ev["accuracy"], ev["n"]
    lo, hi = wilson(acc, n)
    priv = out / "privacy.json"
    spent, sigma = "—", "—"
    if priv.is_file():
        p = json.loads(priv.read_text())
        spent, sigma = f"{p['epsilon_spent']:.2f}", f"{p['noise_multiplier']:.3f}"
    return f"| {label} | {spent} | {sigma} | {100 * acc:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n = {n}) | {seconds / 60:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--out", type=Path, default=Path("runs/privacy"))
    ap.add_argument(
        "--limit", type=int, default=200, help="training samples (a seeded subset; 0: the whole split)"
    )
    ap.add_argument("--batch-size", type=int, default=8, help="micro-batch of every stage")
    ap.add_argument(
        "--grad-accum", type=int, default=1, help="micro-batches per step (DP: expected batch = the product)"
    )
    ap.add_argument(
        "--steps", type=int, nargs=2, default=(12, 48), help="steps of the align, instruct stages"
    )
    ap.add_argument("--eval-limit", type=int, default=120)
    ap.add_argument("--delta", type=float, default=1e-5)
    args = ap.parse_args()
    base = settings(args.limit, tuple(args.steps), args.eval_limit, args.batch_size, args.grad_accum)
    rows = []
    runs = [("∞ (no DP)", args.out / "eps-inf", base)]
    for eps in args.epsilons:
        privacy = f"privacy={{target_epsilon: {eps:g}, delta: {args.delta:g}, max_grad_norm: 1.0}}"
        runs.append((f"{eps:g}", args.out / f"eps-{eps:g}", [*base, privacy]))
    for label, out, overrides in runs:
        train(out, overrides)
        rows.append(row(label, out))
        print(rows[-1], flush=True)
    print("\n| ε (target) | ε spent | noise multiplier | accuracy [95 % CI] | training (min) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
