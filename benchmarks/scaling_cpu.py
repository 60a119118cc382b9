"""1 vs 2 processes (gloo) on the quickstart recipe's first stage, on this machine's CPUs.

Both sides use the same cores: one process with ``--threads`` torch threads, or ``--threads`` processes
with one thread each (``omnifuse train --nproc``, torchrun underneath), the same global batch (8) and
data order. Each side trains ``--steps`` optimizer steps; samples/s is the median over the steps after
the first two (warm-up), read from metrics.jsonl; the sides alternate ``--repeats`` times and the medians
of the repeats are compared. Prints the scaling ratio (2 processes / 1 process).

    .venv/bin/python benchmarks/scaling_cpu.py --steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RECIPE = Path(__file__).parents[1] / "src" / "omnifuse" / "recipes" / "quickstart.yaml"


def one_side(tmp: Path, nproc: int, threads: int, steps: int, global_batch: int, tag: str) -> float:
    raw = yaml.safe_load(RECIPE.read_text())
    stage = raw["stages"][0]
    stage.update(steps=steps, batch_size=global_batch // nproc, warmup=0)
    raw["stages"] = [stage]
    recipe = tmp / f"recipe-{tag}.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp / f"run-{tag}"
    cmd = [sys.executable, "-m", "omnifuse", "train", str(recipe), "--out", str(out), "--no-progress"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads if nproc == 1 else 1)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates = [json.loads(line)["samples_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="cores used by each side")
    ap.add_argument("--global-batch", type=int, default=8)
    args = ap.parse_args()
    one, two = [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            one.append(one_side(Path(d), 1, args.threads, args.steps, args.global_batch, f"1-{r}"))
            two.append(one_side(Path(d), args.threads, args.threads, args.steps, args.global_batch, f"2-{r}"))
    a, b = statistics.median(one), statistics.median(two)
    print(f"1 process × {args.threads} threads: {a:.2f} samples/s  (repeats {one})")
    print(f"{args.threads} processes × 1 thread: {b:.2f} samples/s  (repeats {two})")
    print(f"scaling ratio ({args.threads} processes / 1 process): {b / a:.2f}")


if __name__ == "__main__":
    main()
