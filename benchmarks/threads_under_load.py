"""The quickstart's first stage idle and beside a busy process: does training degrade gracefully?

Trains the quickstart recipe's first stage (``--steps`` optimizer steps, batch 8) four ways, alternating
``--repeats`` times: on the idle machine and beside one CPU-bound competitor (a one-thread numpy matrix
product loop, ``--nice`` sets its niceness), each with ``runtime.threads: auto`` (omnifuse's default: the
cores other processes leave free) and with a fixed count of all the machine's cores (torch's own
default). Time = the sum of the steps' wall times from metrics.jsonl (model loading excluded), median
over repeats. Prints each time and the slowdown ratios loaded / idle.

    .venv/bin/python benchmarks/threads_under_load.py --steps 40 --repeats 2
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

import psutil
import yaml

RECIPE = Path(__file__).parents[1] / "src" / "omnifuse" / "recipes" / "quickstart.yaml"
BUSY = "import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n    a = a @ a; a /= a.max()\n"


def stage_time(tmp: Path, steps: int, threads: int | str, tag: str) -> tuple[float, list[int]]:
    raw = yaml.safe_load(RECIPE.read_text())
    stage = raw["stages"][0]
    stage.update(steps=steps, warmup=0)
    raw["stages"] = [stage]
    raw["runtime"] = {"threads": threads}
    recipe = tmp / f"recipe-{tag}.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp / f"run-{tag}"
    cmd = [sys.executable, "-m", "omnifuse", "train", str(recipe), "--out", str(out), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in rows), sorted({r["threads"] for r in rows})


def competitor(nice: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", BUSY], env=env, preexec_fn=(lambda: os.nice(nice)) if nice else None
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nice", type=int, default=0, help="niceness of the competing process")
    args = ap.parse_args()
    cores = psutil.cpu_count(logical=True) or 1
    sides = {("idle", "auto"): [], ("idle", cores): [], ("loaded", "auto"): [], ("loaded", cores): []}
    seen: dict[tuple, set] = {k: set() for k in sides}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            for load, threads in sides:
                busy = competitor(args.nice) if load == "loaded" else None
                try:
                    seconds, used = stage_time(Path(d), args.steps, threads, f"{load}-{threads}-{r}")
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                sides[(load, threads)].append(seconds)
                seen[(load, threads)].update(used)
    med = {k: statistics.median(v) for k, v in sides.items()}
    print(f"{cores} cores; quickstart stage 1, {args.steps} steps of batch 8; competitor nice {args.nice}")
    for (load, threads), t in med.items():
        print(
            f"  {load:6s} threads={threads!s:4s}: {t:7.1f} s  (repeats {[round(x, 1) for x in sides[(load, threads)]]}, "
            f"threads used {sorted(seen[(load, threads)])})"
        )
    print(f"slowdown under load, runtime.threads auto: {med[('loaded', 'auto')] / med[('idle', 'auto')]:.2f}")
    print(f"slowdown under load, {cores} fixed threads: {med[('loaded', cores)] / med[('idle', cores)]:.2f}")


if __name__ == "__main__":
    main()
