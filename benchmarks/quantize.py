"""Float32 vs CPU int8 (``--quantize int8``) on a trained run: generation speed and memory, in one run.

Each measurement is a fresh process (peak RSS is a per-process high-water mark), loading the run the
way ``omnifuse eval RUN [--quantize int8]`` does (``omnifuse.tasks.generate.load.load_model``), with
one torch thread. Rounds alternate the order (float first, then int8 first, ...); the summary gives
the medians per side, their ratio (int8 / float) and the median of the per-round ratios ("paired",
less sensitive to the machine's load changing during the run). Per process:

- **answer questions/s**: the eval workload: greedy answers to ``--questions`` questions of the recipe's
  eval data at the recipe's eval batch size and ``max_new_tokens`` (each row stops at its end-of-turn
  token), after one warm-up batch;
- **decode tokens/s**: ``--new-tokens`` tokens per row forced (the processor's stop ids cleared, so both
  sides generate exactly the same number) on one batch, prompt encoding included, after a warm-up;
- **RSS** (``/proc/self/statm``): once the model is loaded (the float side's weights are a memory map
  of the safetensors file, resident only as far as read: an underestimate until the first generation),
  after the generations (every weight read: the steady state of a server), and the process's peak
  (``ru_maxrss``: loading included — the int8 side reads the float weights before quantising them).

    .venv/bin/python benchmarks/quantize.py runs/quickstart --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(
    run: str, mode: str, questions: int, new_tokens: int, batch_size: int | None, decode_batch: int
) -> dict:
    import torch

    torch.set_num_threads(1)
    from omnifuse.data.sample import select_subset
    from omnifuse.data.sources import load_data
    from omnifuse.generation.engine import Engine, GenerationConfig, generation_config
    from omnifuse.rundir import RunDir
    from omnifuse.tasks.generate.load import load_model

    t0 = time.perf_counter()
    recipe, model, processor = load_model(RunDir(Path(run)), progress=False, quantize=mode)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    samples = select_subset(load_data(recipe.data.eval), questions, recipe.data.eval_seed)
    bs = batch_size or recipe.eval.batch_size
    engine = Engine(model, processor)
    cfg = generation_config(recipe, greedy=True)
    batches = [samples[i : i + bs] for i in range(0, len(samples), bs)]
    with torch.inference_mode():
        engine.generate_ids(batches[0], cfg)  # warm-up
        t0 = time.perf_counter()
        answers = [ids for b in batches for ids in engine.generate_ids(b, cfg)]
        answer_s = time.perf_counter() - t0
        processor.stop_ids = []  # every row generates exactly new_tokens tokens
        forced = GenerationConfig(max_new_tokens=new_tokens)
        rows = samples[:decode_batch]
        engine.generate_ids(rows, GenerationConfig(max_new_tokens=2))  # warm-up
        t0 = time.perf_counter()
        decoded = engine.generate_ids(rows, forced)
        decode_s = time.perf_counter() - t0
    return {
        "mode": mode,
        "load_s": load_s,
        "questions_per_s": len(samples) / answer_s,
        "answer_tokens": sum(len(a) for a in answers),
        "decode_tokens_per_s": sum(len(d) for d in decoded) / decode_s,
        "decode_batch": len(rows),
        "rss_loaded_mb": rss_loaded,
        "rss_after_mb": _rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a trained generate run directory (read only)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per side (median)")
    ap.add_argument("--questions", type=int, default=64, help="eval questions answered per process")
    ap.add_argument("--new-tokens", type=int, default=32, help="forced tokens per row in the decode timing")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="answers: default the recipe's eval batch size"
    )
    ap.add_argument("--decode-batch", type=int, default=8, help="rows of the forced-decode timing")
    ap.add_argument("--worker", choices=["none", "int8"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        w = worker(args.run, args.worker, args.questions, args.new_tokens, args.batch_size, args.decode_batch)
        print(json.dumps(w))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows: dict[str, list[dict]] = {"none": [], "int8": []}
    for r in range(args.rounds):
        for mode in ("none", "int8") if r % 2 == 0 else ("int8", "none"):
            cmd = [sys.executable, __file__, args.run, "--worker", mode, "--questions", str(args.questions),
                   "--new-tokens", str(args.new_tokens), "--decode-batch", str(args.decode_batch)]  # fmt: skip
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows[mode].append(row)
            print(f"round {r} {mode:>5}: " + "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in row.items() if k != "mode"), flush=True)  # fmt: skip
    keys = [
        "questions_per_s",
        "decode_tokens_per_s",
        "rss_loaded_mb",
        "rss_after_mb",
        "peak_rss_mb",
        "load_s",
    ]
    print(f"\nmedians of {args.rounds} processes per side, 1 thread (run: {Path(args.run)})")
    print(f"{'':22}{'float32':>10}{'int8':>10}{'int8/float':>12}{'paired':>8}")
    for k in keys:
        a = statistics.median(x[k] for x in rows["none"])
        b = statistics.median(x[k] for x in rows["int8"])
        paired = statistics.median(y[k] / x[k] for x, y in zip(rows["none"], rows["int8"], strict=True))
        print(f"{k:22}{a:10.3g}{b:10.3g}{b / a:12.2f}{paired:8.2f}")
    answers = [x["answer_tokens"] for x in rows["none"] + rows["int8"]]
    print(f"answer tokens generated per process: {sorted(set(answers))}")


if __name__ == "__main__":
    main()
